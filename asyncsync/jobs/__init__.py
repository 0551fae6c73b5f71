"""asyncsync.jobs"""
