"""asyncsync.client"""
