"""asyncsync.sync"""
