"""asyncsync.backup"""
