#!/usr/bin/env python3
"""Generates the CPU emulation of agate's CUDA flash kernels (see run.sh).

gen.py ROOT OUT writes OUT/emu_kernels.h (src/model/cuda/flash_attention.cu with the CUDA runtime
replaced by prelude.h, in namespace emu) and OUT/emu_test.cpp (tests/model/test_flash_cuda.cpp
calling emu::flash_*_cuda on CPU tensors; the CUDA-allocator memory case is left out).
"""
import os
import re
import sys

root, out = sys.argv[1], sys.argv[2]
tool = os.path.dirname(os.path.abspath(__file__))

src = os.environ.get('FA_SRC', os.path.join(root, 'src/model/cuda/flash_attention.cu'))
seen = set()


def inline(path):
    """The file with its local includes ("x.cuh", once each) pasted in place."""
    def sub(m):
        inc = os.path.normpath(os.path.join(os.path.dirname(path), m.group(1)))
        if inc in seen:
            return ''
        seen.add(inc)
        return inline(inc)
    return re.sub(r'#include "([\w./]+\.cuh)"\n', sub, open(path).read())


s = inline(src)
s = s.replace('#pragma once\n', '')
s = re.sub(r'#include <(ATen/cuda|ATen/ops|c10/cuda)/[^>]*>\n', '', s)
s = re.sub(r'#include <(mma\.h|cuda_bf16\.h|cuda_pipeline\.h)>\n', '', s)
s = s.replace('#include "../dispatch.h"', f'#include "{root}/src/model/dispatch.h"')
s = s.replace('#include "../flash_attention.h"',
              f'#include "{root}/src/model/flash_attention.h"\n#include "{tool}/prelude.h"')
s = s.replace('namespace agate::kernels {', 'namespace emu {\nusing namespace agate::kernels;')
s = s.replace('}  // namespace agate::kernels', '}  // namespace emu')
s, n = re.subn(r'extern __shared__ __align__\(\d+\) unsigned char smem_raw\[\];', 'unsigned char* smem_raw = g_smem;', s)
assert n > 0
s = s.replace('at::cuda::getCurrentCUDAStream()', 'nullptr')
s = s.replace('at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin', 'size_t(232448)')  # H100
s = s.replace('const c10::cuda::CUDAGuard guard(a.q.device());', '')
s = s.replace('a.q.is_cuda()', 'true')
launches = s.count('<<<')
s, n = re.subn(r'([\w<>, ]+?)<<<(.+?), (\w+), (.+?), stream>>>\(', r'emu_launch(\2, \3, \4, \1, ', s)
assert n == launches and n > 0, 'unexpected kernel launch syntax'
open(os.path.join(out, 'emu_kernels.h'), 'w').write(s)

t = open(os.path.join(root, 'tests/model/test_flash_cuda.cpp')).read()
t = t.replace('kernels::flash_forward_cuda', 'emu::flash_forward_cuda')
t = t.replace('kernels::flash_backward_cuda', 'emu::flash_backward_cuda')
t = t.replace('const at::Device cuda(at::kCUDA, 0);', 'const at::Device cuda(at::kCPU);')
t = t.replace('is_cuda()', 'defined()')
t = t.replace('if (!torch::cuda::is_available()) GTEST_SKIP()', 'if (false) GTEST_SKIP()')
t = t.replace('#include "../../src/model/flash_attention.h"', '#include "emu_kernels.h"')
t = re.sub(r'#include <c10/cuda/[^>]*>\n', '', t)
i, j = t.index('// Memory linear in T'), t.index('#else  // !AGATE_USE_CUDA')
t = t[:i] + t[j:]
open(os.path.join(out, 'emu_test.cpp'), 'w').write(t)
