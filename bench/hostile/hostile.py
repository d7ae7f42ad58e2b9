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

# ---------------------------------------------------------------------------------------------
# GGUF v3 reader / writer
# ---------------------------------------------------------------------------------------------
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
            d = f.read(16 << 20)
        self.p = 4
        self.version, self.n_tensors, self.n_kv = self._rd(d, 'I'), self._rd(d, 'Q'), self._rd(d, 'Q')
        self.kvs, self.tensors = [], []
        for _ in range(self.n_kv):
            start, key = self.p, self._str(d).decode()
            t_off, t = self.p, self._rd(d, 'I')
            v_off, v = self.p, self._val(d, t)
            self.kvs.append({'key': key, 'type': t, 'value': v, 'raw': d[start:self.p], 'off': start,
                             't_off': t_off, 'v_off': v_off})
        self.kv_end = self.p
        for _ in range(self.n_tensors):
            start, name = self.p, self._str(d).decode()
            nd_off, nd = self.p, self._rd(d, 'I')
            dims = [self._rd(d, 'Q') for _ in range(nd)]
            ty, off = self._rd(d, 'I'), self._rd(d, 'Q')
            self.tensors.append({'name': name, 'dims': dims, 'type': ty, 'offset': off, 'off': start, 'nd_off': nd_off})
        self.info_end = self.p
        self.align = self.get('general.alignment', 32)
        self.data_start = self.info_end + (-self.info_end) % self.align
        self.data_len = self.size - self.data_start

    def _rd(self, d, fmt):
        self.p += struct.calcsize('<' + fmt)
        return struct.unpack_from('<' + fmt, d, self.p - struct.calcsize('<' + fmt))[0]

    def _str(self, d):
        self.p += self._rd(d, 'Q')
        return d[self.p - struct.unpack_from('<Q', d, self.p - (self.p - 0) if False else 0)[0] * 0 - 0:self.p] \
            if False else d[self._last_start:self.p] if False else self._slice(d)

    def _slice(self, d):
        n = struct.unpack_from('<Q', d, self._mark)[0] if False else None
        return n

    def _val(self, d, t):
        if t == STR:
            return self._str(d)
        if t == ARR:
            et, n = self._rd(d, 'I'), self._rd(d, 'Q')
            return (et, [self._val(d, et) for _ in range(n)])
        return self._rd(d, SCAL[t])
