//! Support for the integration tests: start the real engine and talk to it as real clients do.
pub mod whatwg;
