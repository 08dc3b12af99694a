"""Keys and tokens for the auth tests, made with PyJWT and cryptography (not ringcast's code).

    jwt_tool.py keys DIR           RSA, EC P-256 and HMAC keys: DIR/{rsa,ec}.pem (private),
                                   DIR/hmac.key, and DIR/jwks.json (the public set, kids
                                   "rsa-1", "ec-1", "hs-1")
    jwt_tool.py token DIR KID CLAIMS_JSON   prints a token signed with that key
"""
import base64
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_b64(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def keys(d: str, suffix: str = "1") -> None:
    os.makedirs(d, exist_ok=True)
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    e = ec.generate_private_key(ec.SECP256R1())
    secret = os.urandom(32)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    with open(os.path.join(d, f"rsa-{suffix}.pem"), "wb") as f:
        f.write(r.private_bytes(pem, pkcs8, none))
    with open(os.path.join(d, f"ec-{suffix}.pem"), "wb") as f:
        f.write(e.private_bytes(pem, pkcs8, none))
    with open(os.path.join(d, f"hs-{suffix}.key"), "wb") as f:
        f.write(secret)
    rn = r.public_key().public_numbers()
    en = e.public_key().public_numbers()
    jwks = {
        "keys": [
            {"kty": "RSA", "kid": f"rsa-{suffix}", "use": "sig", "n": int_b64(rn.n), "e": int_b64(rn.e)},
            {"kty": "EC", "kid": f"ec-{suffix}", "crv": "P-256", "use": "sig",
             "x": b64(en.x.to_bytes(32, "big")), "y": b64(en.y.to_bytes(32, "big"))},
            {"kty": "oct", "kid": f"hs-{suffix}", "k": b64(secret)},
        ]
    }
    with open(os.path.join(d, f"jwks-{suffix}.json"), "w") as f:
        json.dump(jwks, f)


def token(d: str, kid: str, claims: str) -> str:
    kind = kid.split("-")[0]
    if kind == "rsa":
        key, alg = open(os.path.join(d, f"{kid}.pem"), "rb").read(), "RS256"
    elif kind == "ec":
        key, alg = open(os.path.join(d, f"{kid}.pem"), "rb").read(), "ES256"
    else:
        key, alg = open(os.path.join(d, f"{kid}.key"), "rb").read(), "HS256"
    return jwt.encode(json.loads(claims), key, algorithm=alg, headers={"kid": kid})


if __name__ == "__main__":
    if sys.argv[1] == "keys":
        keys(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "1")
    else:
        print(token(sys.argv[2], sys.argv[3], sys.argv[4]))
