"""asyncsync.datastore"""
