"""Reference hook backends for taleus-bootstrap (import name ``taleus_hooks``)."""
