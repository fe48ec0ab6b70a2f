//! Backend health checks (TCP connect, HTTP GET) with keepalived's knobs.
