#!/usr/bin/python3
"""Extracts the ELF vmlinux from an x86 bzImage.

usage: extract_vmlinux.py BZIMAGE OUTPUT

The bzImage setup header says where the compressed payload is (payload_offset/payload_length, boot
protocol >= 2.08). The payload's first bytes identify the compressor (magic numbers below); it is
decompressed with the matching command-line tool (run with an argv list, no shell) and the result must be
an ELF file. If the header is unusable, the file is scanned for every known magic instead.
"""
import os
import struct
import subprocess
import sys
import tempfile

# magic -> argv that decompresses stdin to stdout
DECOMPRESSORS = [
    (b"\x1f\x8b\x08", ["gzip", "-dc"]),
    (b"\xfd7zXZ\x00", ["xz", "-dc"]),
    (b"\x5d\x00\x00", ["xz", "--format=lzma", "-dc"]),
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"]),
    (b"\x02\x21\x4c\x18", ["lz4", "-dc"]),  # LZ4 legacy frame, used by the kernel
    (b"BZh", ["bzip2", "-dc"]),
    (b"\x89LZO\x00", ["lzop", "-dc"]),
]


def decompress(data, argv):
    """Runs argv with data on stdin; returns stdout (possibly partial: trailing bytes make tools complain)."""
    with tempfile.TemporaryFile() as src:
        src.write(data)
        src.seek(0)
        try:
            proc = subprocess.run(argv, stdin=src, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
        except FileNotFoundError:
            return b""
    return proc.stdout


def is_elf(blob):
    return len(blob) > 64 and blob[:4] == b"\x7fELF"


def from_header(image):
    """Returns (payload, argv) from the boot protocol header, or None."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        return None
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < 0x208:
        return None
    setup_sects = image[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = image[start:start + payload_length]
    for magic, argv in DECOMPRESSORS:
        if payload.startswith(magic):
            return payload, argv
    return None


def main():
    if len(sys.argv) != 3:
        sys.stderr.write("usage: extract_vmlinux.py BZIMAGE OUTPUT\n")
        return 2
    with open(sys.argv[1], "rb") as f:
        image = f.read()
    found = from_header(image)
    candidates = [found] if found else []
    if not candidates:
        for magic, argv in DECOMPRESSORS:
            pos = image.find(magic)
            while pos != -1 and len(candidates) < 64:
                candidates.append((image[pos:], argv))
                pos = image.find(magic, pos + 1)
    for payload, argv in candidates:
        out = decompress(payload, argv)
        if is_elf(out):
            tmp = sys.argv[2] + ".tmp"
            with open(tmp, "wb") as f:
                f.write(out)
            os.replace(tmp, sys.argv[2])
            sys.stderr.write("extract_vmlinux: %s payload, %d -> %d bytes\n" % (argv[0], len(payload), len(out)))
            return 0
    sys.stderr.write("extract_vmlinux: no decompressible ELF payload found in %s\n" % sys.argv[1])
    return 1


if __name__ == "__main__":
    sys.exit(main())
