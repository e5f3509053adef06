"""Backups: copies of the database taken while serving, checked before they count, restored only
onto a file no server uses; the data key handled apart from the copies."""
