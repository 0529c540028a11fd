"""Database access. Every function takes a session and never commits: the caller owns the transaction."""
