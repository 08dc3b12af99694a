//! ringcast engine.
pub mod proto;
