//! The support library's own decoders, checked without an engine: the chunked transfer
//! decoder (any split of the input decodes like the whole, and malformed framing is
//! refused), the flat JSON reader and the response head parser. The integration tests
//! trust these to judge the engine, so they must be right first.
use proptest::prelude::*;
use ringcast_tests::http::Response;
use ringcast_tests::json::parse_flat_object;
use ringcast_tests::sse::ChunkedDecoder;

/// Encodes `pieces` as chunks (with a chunk extension on every third) and the last chunk.
fn encode_chunks(pieces: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().filter(|p| !p.is_empty()).enumerate() {
        let ext = if i % 3 == 2 { ";name=value" } else { "" };
        out.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn decode_all(input: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut decoder = ChunkedDecoder::default();
    let mut out = Vec::new();
    decoder.feed(input, &mut out)?;
    Ok((out, decoder.is_done()))
}

proptest! {
    #[test]
    fn chunked_any_split_decodes_like_the_whole(
        pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let encoded = encode_chunks(&pieces);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(encoded.len() + 1)).collect();
        cuts.sort_unstable();
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([encoded.len()]) {
            prop_assert!(!decoder.is_done() || from == encoded.len());
            decoder.feed(&encoded[from..cut], &mut out).map_err(TestCaseError::fail)?;
            from = cut;
        }
        prop_assert!(decoder.is_done());
        prop_assert_eq!(out, pieces.concat());
    }
}

#[test]
fn chunked_refuses_malformed_framing() {
    for bad in [
        &b"g\r\nabc"[..],
        b"\r\n",
        b"3\nabc\r\n",
        b"3\r\nabcd\r\n",
        b"3\r\nabc\n0\r\n\r\n",
        b"-1\r\n",
        b"0\r\n\r\nextra",
        b"123456789\r\n",
    ] {
        assert!(
            decode_all(bad).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(decode_all(b"3\r\nabc\r\n"), Ok((b"abc".to_vec(), false)));
    assert_eq!(
        decode_all(b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n"),
        Ok((b"0123456789".to_vec(), true))
    );
}

#[test]
fn json_reads_flat_objects() {
    let o = parse_flat_object(r#" { "a" : "x\"y\\z\/\n\u00e9\ud83d\ude00" , "b":null } "#).unwrap();
    assert_eq!(o["a"].as_deref(), Some("x\"y\\z/\n\u{e9}\u{1f600}"));
    assert_eq!(o["b"], None);
    assert!(parse_flat_object("{}").unwrap().is_empty());
    for bad in [
        r#"{"a":"x",}"#,
        r#"{a:"x"}"#,
        r#"{"a":1}"#,
        "{\"a\":\"raw\u{1}control\"}",
        r#"{"a":"x"} trailing"#,
        r#"{"a":"x","a":"y"}"#,
        r#"{"a":"\ud83d"}"#,
        r#"{"a":"\q"}"#,
        r#"{"a":"unterminated}"#,
    ] {
        assert!(parse_flat_object(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn response_heads_parse_strictly() {
    let r = Response::parse(b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nConnection: keep-alive, Close");
    assert_eq!((r.status, r.reason.as_str()), (404, "Not Found"));
    assert_eq!(r.content_length(), Some(3));
    assert!(r.closes());
    assert_eq!(r.header("CONTENT-LENGTH"), Some("3"));
    let r = Response::parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive");
    assert!(!r.closes());
    for bad in [
        &b"HTTP/2 200 OK"[..],
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 200 OK\r\nNo-Colon",
        b"HTTP/1.1 200 OK\r\nBad Name: x",
        b"HTTP/1.1 200 OK\r\nA: b\nC: d",
    ] {
        let parsed = std::panic::catch_unwind(|| Response::parse(bad));
        assert!(parsed.is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
    }
}
