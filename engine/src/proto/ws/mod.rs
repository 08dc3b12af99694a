//! WebSocket for the server side (RFC 6455): the opening handshake (§4.2), a decoder for
//! the frames clients send (§5) and an encoder for the frames the server sends.
//!
//! - `handshake`: which request heads are upgrades, the 101 answer, `Origin` patterns.
//! - `frame`: the frame codec: the client frame rules and the bytes of server frames.
//! - `mask`: the XOR of payloads with the client's key (§5.3).
//! - [`close`]: close codes and the rules of a close payload (§5.5.1, §7.4).
//! - [`deflate`]: permessage-deflate (RFC 7692): the offers, and one message's codec.
//!
//! Everything is used through the names re-exported here.
//!
//! Owns: the protocol, from the upgrade request to the close frame.
//!
//! Must never: touch a socket or a clock, mask a server frame (§5.1: one unmasked
//! encoding is shared by every subscriber), allocate for a frame that arrives whole, or
//! hold more than `max_message` bytes of a message (the limit is checked against the
//! announced length before a byte of it is buffered).
pub mod close;
pub mod deflate;
mod frame;
mod handshake;
mod mask;

pub use frame::{
    encode_close, encode_frame, encode_masked_frame, frame_header, Decoded, Decoder, Message, Opcode,
};
pub use handshake::{
    accept_key, check_upgrade, origin_allowed, switching_protocols, HandshakeError, Upgrade,
    UPGRADE_REQUIRED_HEADERS,
};
pub use mask::{apply_mask, apply_mask_reference};
