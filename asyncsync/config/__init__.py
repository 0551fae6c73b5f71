"""asyncsync.config"""
