"""The user-side client: the login profile on disk and anonymous calls to a proxy."""
