"""Independent libsodium secretstream (PyNaCl) in WAL-G's framing, to check
walden's encryption both ways: 24-byte header, 8192-byte MESSAGE chunks,
one FINAL chunk with the rest.

usage: sodium_stream.py encrypt|decrypt KEYFILE < in > out
KEYFILE holds the raw 32-byte key.
"""
import sys

import nacl.bindings as b

CHUNK = 8192
ABYTES = b.crypto_secretstream_xchacha20poly1305_ABYTES


def encrypt(key, data):
    state = b.crypto_secretstream_xchacha20poly1305_state()
    out = [b.crypto_secretstream_xchacha20poly1305_init_push(state, key)]
    full = len(data) // CHUNK
    for i in range(full):
        out.append(b.crypto_secretstream_xchacha20poly1305_push(
            state, data[i * CHUNK:(i + 1) * CHUNK], None,
            b.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE))
    out.append(b.crypto_secretstream_xchacha20poly1305_push(
        state, data[full * CHUNK:], None,
        b.crypto_secretstream_xchacha20poly1305_TAG_FINAL))
    return b"".join(out)


def decrypt(key, data):
    state = b.crypto_secretstream_xchacha20poly1305_state()
    b.crypto_secretstream_xchacha20poly1305_init_pull(state, data[:24], key)
    pos, out = 24, []
    while True:
        chunk = data[pos:pos + CHUNK + ABYTES]
        pos += len(chunk)
        msg, tag = b.crypto_secretstream_xchacha20poly1305_pull(state, chunk, None)
        out.append(msg)
        if tag == b.crypto_secretstream_xchacha20poly1305_TAG_FINAL:
            if pos != len(data):
                raise SystemExit("data after the final chunk")
            return b"".join(out)
        if len(chunk) < CHUNK + ABYTES:
            raise SystemExit("truncated")


def main():
    mode, keyfile = sys.argv[1], sys.argv[2]
    key = open(keyfile, "rb").read()
    data = sys.stdin.buffer.read()
    result = encrypt(key, data) if mode == "encrypt" else decrypt(key, data)
    sys.stdout.buffer.write(result)


main()
