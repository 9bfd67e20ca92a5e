"""A small PTX interpreter for tests/cuda_emu/ptx_stats.py: `Thread` runs one thread of a kernel
entry over the PTX that NVRTC emits and counts the instructions it executes; `run_block` runs every
thread of one block. Global loads return a constant and the shared memory is per thread, which is
enough for the fused kernels, whose control flow depends only on indices, sizes and parameters.
"""

from __future__ import annotations

import math
import re
import struct


def entries(ptx: str) -> dict:
    """entry name -> list of body lines."""
    out, name, body, depth = {}, None, [], 0
    for line in ptx.splitlines():
        m = re.match(r"\s*\.(?:visible\s+)?\.entry\s+(\w+)", line)
        if m:
            name, body, depth = m.group(1), [], 0
            continue
        if name is None:
            continue
        depth += line.count("{") - line.count("}")
        body.append(line)
        if "}" in line and depth <= 0 and any("{" in b for b in body):
            out[name] = body
            name = None
    return out


def is_instr(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith(("//", ".", "{", "}", "$")) and s.endswith(";")


# --------------------------------------------------------------------------- a one-thread PTX interpreter

MASK = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}


def width(t: str) -> int:
    return int(re.sub(r"\D", "", t) or 32) if t != "pred" else 1


def signed(v: int, w: int) -> int:
    v &= MASK[w]
    return v - (1 << w) if v >> (w - 1) else v


class Thread:
    """Runs one thread of one block through an entry's PTX and counts the instructions it
    executes. Values that do not steer control flow are not modelled faithfully: global loads
    return 0.5, shared memory is this thread's own view, barriers and shuffles are single-thread
    no-ops. That is enough to follow the control flow of these kernels, which depends only on
    indices, sizes and parameters."""

    def __init__(self, body, params: dict, param_bytes: dict, tid, ctaid, ntid, nctaid):
        self.code, self.labels = [], {}
        for line in body:
            s = line.split("//")[0].strip()
            m = re.match(r"(\$\w+):", s)
            if m:
                self.labels[m.group(1)] = len(self.code)
            elif is_instr(s):
                self.code.append(s.rstrip(";"))
        self.r = {}
        self.params, self.pbytes = params, param_bytes  # symbol -> address; address -> bytes
        self.smem = {}
        self.special = {
            "%tid.x": tid,
            "%tid.y": 0,
            "%tid.z": 0,
            "%ctaid.x": ctaid[0],
            "%ctaid.y": ctaid[1],
            "%ctaid.z": ctaid[2],
            "%ntid.x": ntid,
            "%ntid.y": 1,
            "%ntid.z": 1,
            "%nctaid.x": nctaid[0],
            "%nctaid.y": nctaid[1],
            "%nctaid.z": nctaid[2],
            "%laneid": tid % 32,
            "%warpid": tid // 32,
        }
        self.count = 0
        self.global_stores = 0

    def val(self, op: str, t: str):
        op = op.strip()
        if op.startswith("%"):
            if op in self.special:
                return self.special[op]
            return self.r.get(op, 0.0 if t.startswith("f") else 0)
        if op.startswith(("0f", "0F")):
            return struct.unpack("<f", bytes.fromhex(op[2:])[::-1])[0]
        if op.startswith(("0d", "0D")):
            return struct.unpack("<d", bytes.fromhex(op[2:])[::-1])[0]
        if op in self.params:
            return self.params[op]
        if op == "ic_smem_raw":
            return 0
        if t.startswith("f"):
            return float(op)
        return int(op, 0)

    def addr(self, op: str) -> int:
        m = re.match(r"\[([^\]+]+)(?:\+(-?\d+))?\]", op.strip())
        base = m.group(1).strip()
        off = int(m.group(2) or 0)
        b = self.params[base] if base in self.params else (0 if base == "ic_smem_raw" else self.val(base, "u64"))
        return b + off

    def load(self, space: str, t: str, a: int):
        if space == "param":
            for base, data in self.pbytes.items():
                if base <= a < base + len(data):
                    o = a - base
                    fmt = {
                        "u64": "<Q",
                        "s64": "<q",
                        "b64": "<Q",
                        "u32": "<I",
                        "s32": "<i",
                        "b32": "<I",
                        "f32": "<f",
                        "f64": "<d",
                        "u16": "<H",
                        "b16": "<H",
                        "u8": "<B",
                    }[t]
                    return struct.unpack_from(fmt, data, o)[0]
            raise KeyError(f"param load at {a:#x}")
        if space == "shared":
            return self.smem.get(a, 0.0 if t.startswith("f") else 0)
        return 0.5 if t.startswith("f") else 0x3800

    def set(self, d: str, v, t: str):
        if t == "pred" or d.startswith("%p"):
            self.r[d] = v
        elif d.startswith("%f"):  # %f, %fd: float registers (a b32/b64 move reinterprets the bits)
            if isinstance(v, int):
                v = (
                    struct.unpack("<d", struct.pack("<Q", v & MASK[64]))[0]
                    if d.startswith("%fd")
                    else struct.unpack("<f", struct.pack("<I", v & MASK[32]))[0]
                )
            self.r[d] = v
        else:
            if isinstance(v, float):
                v = (
                    struct.unpack("<Q", struct.pack("<d", v))[0]
                    if width(t) == 64
                    else struct.unpack("<I", struct.pack("<f", v))[0]
                )
            self.r[d] = v & MASK[width(t)]

    def run(self, limit=2_000_000):
        pc = 0
        while True:
            if self.count > limit:
                raise RuntimeError("instruction limit")
            ins = self.code[pc]
            pc += 1
            m = re.match(r"(@!?%\w+\s+)?(\S+)\s*(.*)", ins)
            guard, opc, rest = m.group(1), m.group(2), m.group(3)
            self.count += 1
            if guard:
                g = guard.strip()
                neg = g.startswith("@!")
                pv = bool(self.r.get(g.lstrip("@!"), False))
                if pv == neg:
                    continue
            parts = opc.split(".")
            op = parts[0]
            ops = [o.strip() for o in re.split(r",(?![^{]*})", rest)] if rest else []
            t = parts[-1]
            if op == "bra":
                pc = self.labels[ops[0]]
            elif op in ("ret", "exit"):
                return
            elif op in ("bar", "barrier", "membar", "fence"):
                pass
            elif op == "trap":
                raise RuntimeError("trap")
            elif op == "ld":
                space = parts[1]
                a = self.addr(ops[1])
                if parts[2].startswith("v"):
                    regs = [x.strip() for x in ops[0].strip("{}").split(",")]
                    sz = width(t) // 8
                    for i, rg in enumerate(regs):
                        self.set(rg, self.load(space, t, a + i * sz), t)
                else:
                    self.set(ops[0], self.load(space, t, a), t)
            elif op == "st":
                space = parts[1]
                a = self.addr(ops[0])
                if space == "shared":
                    if parts[2].startswith("v"):
                        regs = [x.strip() for x in ops[1].strip("{}").split(",")]
                        for i, rg in enumerate(regs):
                            self.smem[a + i * (width(t) // 8)] = self.val(rg, t)
                    else:
                        self.smem[a] = self.val(ops[1], t)
                elif space == "global":
                    self.global_stores += 1
            elif op == "mov":
                self.set(ops[0], self.val(ops[1], t), t)
            elif op == "cvta":
                self.set(ops[0], self.val(ops[1], "u64"), "u64")
            elif op == "cvt":
                dt, st_ = parts[-2], parts[-1]
                v = self.val(ops[1], st_)
                if dt.startswith("f"):
                    v = float(v) if not st_.startswith("f") else v
                elif st_.startswith("f"):
                    v = int(v) if v == v else 0
                elif st_.startswith("s"):
                    v = signed(v, width(st_))
                else:
                    v &= MASK[width(st_)]
                self.set(ops[0], v, dt)
            elif op == "setp":
                cmp_, ct = parts[1], parts[2]
                x, y = self.val(ops[1], ct), self.val(ops[2], ct)
                if ct.startswith("s"):
                    x, y = signed(x, width(ct)), signed(y, width(ct))
                res = {
                    "eq": x == y,
                    "ne": x != y,
                    "lt": x < y,
                    "le": x <= y,
                    "gt": x > y,
                    "ge": x >= y,
                    "lo": x < y,
                    "ls": x <= y,
                    "hi": x > y,
                    "hs": x >= y,
                    "ltu": x < y,
                    "leu": x <= y,
                    "gtu": x > y,
                    "geu": x >= y,
                    "equ": x == y,
                    "neu": x != y,
                    "num": True,
                    "nan": False,
                }[cmp_]
                if len(parts) > 3 and parts[3] in ("and", "or", "xor"):
                    q = bool(self.r.get(ops[3].lstrip("!"), False)) ^ ops[3].startswith("!")
                    res = {"and": res and q, "or": res or q, "xor": res != q}[parts[3]]
                dsts = ops[0].split("|")
                self.r[dsts[0]] = res
                if len(dsts) > 1:
                    self.r[dsts[1]] = not res
            elif op == "selp":
                self.set(ops[0], self.val(ops[1], t) if self.r.get(ops[3], False) else self.val(ops[2], t), t)
            elif op in ("and", "or", "xor", "not") and t == "pred":
                vals = [bool(self.r.get(o.lstrip("!"), False)) ^ o.startswith("!") for o in ops[1:]]
                res = {
                    "and": lambda: vals[0] and vals[1],
                    "or": lambda: vals[0] or vals[1],
                    "xor": lambda: vals[0] != vals[1],
                    "not": lambda: not vals[0],
                }[op]()
                self.r[ops[0]] = res
            elif op in ("shfl",):
                self.set(ops[0].split("|")[0], self.val(ops[1], "b32"), "b32")
            elif op in ("ld", "prefetch"):
                pass
            else:
                vals = [self.val(o, t) for o in ops[1:]]
                w = width(t) if not t.startswith("f") else 0
                sgn = t.startswith("s")
                if sgn:
                    vals = [signed(v, w) for v in vals]
                if op == "add":
                    v = vals[0] + vals[1]
                elif op == "sub":
                    v = vals[0] - vals[1]
                elif op == "mul":
                    v = vals[0] * vals[1]
                    if "wide" in parts:
                        t = ("s" if sgn else "u") + str(2 * w)
                    elif "hi" in parts:
                        v >>= w
                elif op in ("mad", "fma"):
                    v = vals[0] * vals[1] + vals[2]
                    if "wide" in parts:
                        t = ("s" if sgn else "u") + str(2 * w)
                elif op == "div":
                    v = vals[0] / vals[1] if t.startswith("f") else int(vals[0] / vals[1]) if vals[1] else 0
                elif op == "rem":
                    v = int(math.fmod(vals[0], vals[1])) if vals[1] else 0
                elif op == "neg":
                    v = -vals[0]
                elif op == "abs":
                    v = abs(vals[0])
                elif op == "min":
                    v = min(vals)
                elif op == "max":
                    v = max(vals)
                elif op == "and":
                    v = vals[0] & vals[1]
                elif op == "or":
                    v = vals[0] | vals[1]
                elif op == "xor":
                    v = vals[0] ^ vals[1]
                elif op == "not":
                    v = ~vals[0]
                elif op == "shl":
                    v = vals[0] << (self.val(ops[2], "u32") & 0xFF)
                elif op == "shr":
                    v = vals[0] >> (self.val(ops[2], "u32") & 0xFF)
                elif op in ("rcp", "sqrt", "ex2", "lg2"):
                    v = vals[0]
                elif op == "brev":
                    v = int(f"{vals[0] & MASK[w]:0{w}b}"[::-1], 2)
                elif op == "bfind":
                    x = vals[0] & MASK[w]
                    v = x.bit_length() - 1 if x else MASK[32]
                    if "shiftamt" in parts and x:
                        v = w - 1 - v
                elif op == "popc":
                    v = bin(vals[0]).count("1")
                elif op == "bfe":
                    v = (vals[0] >> vals[1]) & ((1 << vals[2]) - 1)
                else:
                    raise NotImplementedError(ins)
                self.set(ops[0], v, t)


def param_list(ptx_body_header: str):
    return re.findall(r"\.param\s+(?:\.align\s+\d+\s+)?\.(\w+)\s+(\w+)(?:\[(\d+)\])?", ptx_body_header)


def entry_params(ptx: str, name: str):
    m = re.search(r"\.entry\s+" + name + r"\((.*?)\)", ptx, re.S)
    return param_list(m.group(1))


def run_block(ptx: str, name: str, values: list, block, grid, ntid) -> tuple[int, int]:
    """Sum over every thread of block `block` of the instructions executed, and global stores.
    `values`: one bytes object per kernel parameter, in order."""
    body = entries(ptx)[name]
    plist = entry_params(ptx, name)
    assert len(plist) == len(values), (name, plist, len(values))
    params, pbytes = {}, {}
    for i, ((_, pname, _), data) in enumerate(zip(plist, values)):
        base = 0x7F000000 + i * 0x1000
        params[pname] = base
        pbytes[base] = data
    total = stores = 0
    for t in range(ntid):
        th = Thread(body, params, pbytes, t, block, ntid, grid)
        th.run()
        total += th.count
        stores += th.global_stores
    return total, stores
