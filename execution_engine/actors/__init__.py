"""The four actors: Building, Submit, Status and Notification (one process each, in pools)."""
