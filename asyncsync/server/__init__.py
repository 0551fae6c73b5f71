"""asyncsync.server"""
