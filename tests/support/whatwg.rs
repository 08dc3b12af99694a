//! WHATWG EventSource parser (HTML §9.2.6), written for the tests.
