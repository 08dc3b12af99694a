//! Sans-IO protocol codecs: they take `&[u8]` and return parsed values or bytes to
//! send. Nothing here touches a file descriptor, a clock or `sys/`.
pub mod http;
pub mod ingest;
pub mod json;
pub mod sse;
pub mod ws;
