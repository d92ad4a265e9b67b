#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into
fuzz/corpus/TARGET/ (run from anywhere; `cargo fuzz cmin` then minimizes).
Avro is encoded by hand (zigzag varints) so no package is needed."""
import json, os, struct, hashlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(ROOT)

def zz(v):
    z = (v << 1) ^ (v >> 63)
    z &= (1 << 64) - 1
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80); z >>= 7
    out.append(z)
    return bytes(out)

def s(text):
    b = text.encode() if isinstance(text, str) else text
    return zz(len(b)) + b

def f32(x): return struct.pack('<f', x)
def f64(x): return struct.pack('<d', x)

def write(target, data):
    d = os.path.join(ROOT, 'corpus', target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), 'wb') as f: f.write(data)

def read(p):
    with open(os.path.join(REPO, p)) as f: return f.read()

example = zz(1_700_000_000_000_000_000) + s("hello") + zz(42) + f64(0.5) + f64(1.0) + f64(-1.0) + f64(0.01)
temperature = zz(1_700_000_000_000) + s("dev-1") + f64(21.5) + f64(70.7) + f64(101325.0) + f64(40.0) + s("ok")
def all_rec(nested):
    r = b'' + b'\x01' + zz(-5) + zz(1 << 40) + f32(1.5) + f64(-2.25) + s(b'\x00\xff') + s("str")
    r += zz(1) + b'abc' + zz(2) + zz(1) + zz(2) + zz(0)          # enum B, fixed, array [1,2]
    r += zz(-1) + zz(len(s("k") + f64(3.0))) + s("k") + f64(3.0) + zz(0)  # map, one negative-count block
    r += zz(2) + f64(9.0)                                           # union double
    r += s("123e4567-e89b-12d3-a456-426614174000") + zz(1_600_000_000_000_000) + s(b'\x01\x00')
    r += (zz(1) + nested) if nested else zz(0)
    return r
alld = all_rec(all_rec(None))
for d in [example, temperature, alld, example[:-3], temperature + b'\x00', alld[:len(alld)//2], b'', b'\x02\x03']:
    write('validate', d)

schemas = [
    (read('config/agents/example.avsc'), example),
    (read('config/agents/temperature.avsc'), temperature),
    ('"null"', b''), ('"boolean"', b'\x01'), ('"int"', zz(-3)), ('"long"', zz(1 << 62)),
    ('"float"', f32(2.0)), ('"double"', f64(2.0)), ('"bytes"', s(b'\x00\x01')), ('"string"', s('é')),
    ('{"type":"array","items":"int"}', zz(2) + zz(1) + zz(2) + zz(0)),
    ('{"type":"map","values":"string"}', zz(1) + s("a") + s("b") + zz(0)),
    ('["null","int",{"type":"array","items":"null"}]', zz(2) + zz(3) + zz(0)),
    ('{"type":"enum","name":"E","symbols":["A","B","C"],"default":"A"}', zz(2)),
    ('{"type":"fixed","name":"F","size":4}', b'abcd'),
    ('{"type":"record","name":"L","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","L"]}]}',
     zz(1) + zz(1) + zz(2) + zz(0)),
    ('{"type":"record","name":"a.R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["X"]}},'
     '{"name":"f","type":"E"},{"name":"g","type":"a.E"}]}', zz(0) * 3),
    ('{"type":"string","logicalType":"uuid"}', s("123e4567-e89b-12d3-a456-426614174000")),
    ('{"type":"bytes","logicalType":"uuid"}', s(b'0123456789abcdef')),
    ('{"type":"fixed","name":"D","size":12,"logicalType":"duration"}', b'\x00' * 12),
    ('{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}', s(b'\x04\xd2')),
    ('{"type":"fixed","name":"X","size":2,"logicalType":"decimal","precision":4}', b'\x04\xd2'),
    ('{"type":"bytes","logicalType":"big-decimal"}', s(zz(2) + b'\x04\xd2' + zz(2))),
    ('{"type":"int","logicalType":"date"}', zz(19000)),
    ('{"type":"long","logicalType":"local-timestamp-nanos"}', zz(5)),
    ('{"type":"record","name":"E0","fields":[]}', b''),
    (read(os.path.join(ROOT, 'targets.rs')).split('r#"{"type":"record","name":"all"')[1].split('"#')[0].join(['{"type":"record","name":"all"', '']), alld),
]
for text, datum in schemas:
    write('schema', text.encode() + b'\x00' + datum)
write('schema', b'{"type":')

# decimate: algorithm, factor, then per record a control byte and 32 value bytes
import random
rng = random.Random(6)
for alg in range(4):
    for factor in (0, 2, 4):
        recs = bytearray([alg, factor])
        for i in range(6):
            recs.append(rng.randrange(0, 0x80) if i != 3 else 0x80 | rng.randrange(0, 0x80))
            recs += struct.pack('<i', rng.randrange(-2**31, 2**31))
            recs += struct.pack('<q', rng.randrange(-2**63, 2**63))
            recs += struct.pack('<q', rng.choice([0, -1, 2**63 - 1, -2**63, rng.randrange(-2**63, 2**63)]))
            recs += f32(rng.choice([0.0, -0.0, float('nan'), float('inf'), 1.5]))
            recs += f64(rng.choice([0.0, -0.0, float('nan'), float('-inf'), 1e308, -2.5]))
        write('decimate', bytes(recs))

relay = read('config/relay.yaml'); glob = read('config/global.yaml')
write('config', relay)
write('config', relay + '\0' + glob)
write('config', '')
write('config', '''channels:
  - {name: a, port: 26001, schema: agents/temperature.avsc, config: {decimation: 3, outputs: {full_rate: [{address: 127.0.0.1, port: 7000}]}}}
  - {name: b, port: 26002, schema: config/agents/example.avsc, config: {archive: {codec: zstandard}, rotation: {mode: size, threshold: 1048576}}}
ports: {start: 26000, end: 26010}
validate: false
socket: {}
multicast: {full_rate: {address: 239.1.1.1, port: 6000}}
storage: {avro_path: /tmp/x}
api: {listen: "127.0.0.1:8080", token: secret}
''')
write('config', 'channels: [{name: a, port: 1, schema: missing.avsc}, {name: a, port: 1, schema: agents/example.avsc}]\nports: {start: 5, end: 1}\n')
write('config', 'decimation: {factor: 0, algorithm: median}\nbogus: 1\n')
write('config', 'a: &x [*x]\n')
write('config', '\0multicast: {decimated: {address: "::1", port: 1}}\napi: {listen: nowhere}\n')

schema_obj = json.loads(read('config/agents/example.avsc'))
bodies = [
    (0, {"name": "ch1", "port": 26001, "schema": schema_obj}),
    (0, {"name": "ch2", "port": 26002, "schema": "agents/example.avsc", "config": {"decimation": 2}}),
    (0, {"name": "ch3", "port": 26003, "schema": "../relay.yaml"}),
    (0, {"name": "ch/4", "port": 70000, "schema": 5, "config": []}),
    (0, {"name": "ch5", "port": 26005, "schema": {"type": "record", "name": "r", "fields": [{"name": "x", "type": "double"}]},
         "config": {"outputs": {"full_rate": [{"address": "127.0.0.1", "port": 7000}]}, "archive": {"codec": "snappy"}, "rotation": {"mode": "size", "threshold": 1000}}}),
    (1, {"decimation": {"factor": 10, "algorithm": "rms"}}),
    (1, {"decimation": 3, "validate": False, "retention": {"mode": "quota", "value": 1000}}),
    (1, {"outputs": {"decimated": [{"address": "239.1.1.9", "port": 6001, "ttl": 4}]}, "socket": {}}),
    (1, [1, 2]),
    (2, schema_obj),
    (2, {"schema": schema_obj}),
    (2, {"schema": json.dumps(schema_obj)}),
    (2, {"type": "record", "name": "data", "namespace": "speeddata.example", "fields": [{"name": "time", "type": "long"}]}),
    (2, "int"),
]
for route, body in bodies:
    write('api_body', bytes([route]) + json.dumps(body).encode())
write('api_body', b'\x00{"name":')
write('api_body', b'\x01' + b'[' * 200)

# verify: archive files (Avro Object Container Files) in every codec the
# reader supports, healthy and torn.
import zlib, subprocess, binascii
def ocf(schema_text, codec, blocks, sync=b'0123456789abcdef'):
    meta = [(b'avro.schema', schema_text.encode())]
    if codec is not None: meta.append((b'avro.codec', codec.encode()))
    out = b'Obj\x01' + zz(len(meta)) + b''.join(s(k) + s(v) for k, v in meta) + zz(0) + sync
    for records in blocks:
        raw = b''.join(records)
        if codec == 'deflate':
            c = zlib.compressobj(6, zlib.DEFLATED, -15); body = c.compress(raw) + c.flush()
        elif codec == 'zstandard':
            body = subprocess.run(['zstd', '-q', '-c'], input=raw, capture_output=True, check=True).stdout
        elif codec == 'snappy':
            lit = bytearray()
            for i in range(0, len(raw), 60):
                chunk = raw[i:i+60]; lit.append((len(chunk) - 1) << 2); lit += chunk
            body = zz(0)[:0] + uvarint(len(raw)) + bytes(lit) + struct.pack('>I', binascii.crc32(raw) & 0xffffffff)
        else:
            body = raw
        out += zz(len(records)) + zz(len(body)) + body + sync
    return out
def uvarint(n):
    out = bytearray()
    while n >= 0x80: out.append((n & 0x7f) | 0x80); n >>= 7
    out.append(n); return bytes(out)
ex_schema = read('config/agents/example.avsc')
recs = [example, zz(7) + s("x") + zz(-1) + f64(1.0) * 4]
for codec in [None, 'null', 'deflate', 'snappy', 'zstandard']:
    f = ocf(ex_schema, codec, [recs, recs[:1]])
    write('verify', f)
write('verify', ocf(ex_schema, 'deflate', [recs])[:-7])            # torn inside the last sync
write('verify', ocf(ex_schema, None, [recs, recs])[:-30])         # torn inside a block
write('verify', ocf(ex_schema, None, [])[:20])                     # torn header
write('verify', ocf('"long"', None, [[zz(1), zz(2)]]) + b'\x02\x02\x00garbage-sync-xx')
write('verify', ocf('{"type":"array","items":"int"}', 'null', [[zz(1) + zz(5) + zz(0)]]))
write('verify', b'Obj')
