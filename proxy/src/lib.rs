//! rewind-proxy: a MySQL-protocol proxy. Filled in by issue 2.
