//! Verifying a subscriber token: RS256, ES256 and HS256 tokens (signed by PyJWT, see
//! benches/keys) through `Auth::verify`, which is what a subscribing request costs the loop
//! beyond an unauthenticated one.
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcast::auth::{Auth, Settings};

fn verify(c: &mut Criterion) {
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/keys");
    let auth = Auth::new(&keys.join("jwks-1.json"), Settings::default()).expect("the bench keys");
    let mut group = c.benchmark_group("auth_verify");
    group.throughput(Throughput::Elements(1));
    for kid in ["rsa-1", "ec-1", "hs-1"] {
        let token = std::fs::read_to_string(keys.join(format!("{kid}.token"))).expect("a token");
        let token = token.trim().to_owned();
        assert!(auth.verify(token.as_bytes()).is_ok(), "{kid}");
        group.bench_function(kid, |b| {
            b.iter(|| auth.verify(std::hint::black_box(token.as_bytes())))
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
