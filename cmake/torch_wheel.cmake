# Finds LibTorch inside the pinned PyPI torch wheel and decides the CUDA flavour.
# In:  AGATE_PYTHON (a Python whose torch is the wheel), AGATE_USE_CUDA (AUTO/ON/OFF).
# Out: TORCH_LIBRARIES etc. (find_package(Torch)), AGATE_CUDA (bool), AGATE_CUDA_ARCHS,
#      AGATE_TORCH_VERSION, AGATE_TORCH_CUDA (the wheel's CUDA version or "").

if(NOT EXISTS "${AGATE_PYTHON}")
  find_program(_agate_py NAMES python3 python)
  if(_agate_py)
    message(STATUS "agate: ${AGATE_PYTHON} not found; trying ${_agate_py} (run scripts/setup.sh for the pinned venv)")
    set(AGATE_PYTHON "${_agate_py}")
  endif()
endif()
execute_process(
  COMMAND "${AGATE_PYTHON}" -c "import torch,torch.utils; print(torch.utils.cmake_prefix_path); print(torch.__version__); print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _agate_torch_out RESULT_VARIABLE _agate_torch_rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _agate_torch_rc EQUAL 0)
  message(FATAL_ERROR "agate: cannot import torch with ${AGATE_PYTHON}.\n"
                      "Hint: run scripts/setup.sh (it installs torch==2.11.0 into .venv/), or pass -DAGATE_PYTHON=/path/to/python.")
endif()
string(REPLACE "\n" ";" _agate_torch_out "${_agate_torch_out}")
list(GET _agate_torch_out 0 _agate_torch_prefix)
list(GET _agate_torch_out 1 AGATE_TORCH_VERSION)
list(LENGTH _agate_torch_out _n)
set(AGATE_TORCH_CUDA "")
if(_n GREATER 2)
  list(GET _agate_torch_out 2 AGATE_TORCH_CUDA)
endif()
list(PREPEND CMAKE_PREFIX_PATH "${_agate_torch_prefix}")

# CUDA: on when the wheel is a CUDA build and nvcc exists (AUTO), or when asked (ON).
set(AGATE_CUDA OFF)
if(NOT AGATE_USE_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER)
    find_program(_agate_nvcc nvcc HINTS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
    if(_agate_nvcc)
      set(CMAKE_CUDA_COMPILER "${_agate_nvcc}")
    endif()
  endif()
  if(AGATE_TORCH_CUDA AND CMAKE_CUDA_COMPILER)
    set(AGATE_CUDA ON)
  elseif(AGATE_USE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "agate: AGATE_USE_CUDA=ON but "
                        "${AGATE_PYTHON}'s torch ${AGATE_TORCH_VERSION} is not a CUDA build or nvcc was not found.\n"
                        "Hint: install the CUDA toolkit (nvcc) or configure with -DAGATE_USE_CUDA=OFF.")
  endif()
endif()

if(AGATE_CUDA)
  # sm_80 (A100) and sm_90 (H100/H200). Torch's own default list starts at compute_50, which
  # nvcc 13 rejects, so it must be set before find_package(Torch).
  set(AGATE_CUDA_ARCHS "80;90" CACHE STRING "CUDA architectures for agate's kernels")
  string(REPLACE ";" "\\;" _archs_esc "${AGATE_CUDA_ARCHS}")
  set(_list "")
  foreach(a ${AGATE_CUDA_ARCHS})
    string(REGEX REPLACE "([0-9])([0-9])$" "\\1.\\2" a "${a}")
    list(APPEND _list "${a}")
  endforeach()
  string(REPLACE ";" " " _list "${_list}")
  # PTX of the newest architecture too, so later GPUs (sm_100, ...) JIT-compile instead of
  # failing with "no kernel image".
  set(ENV{TORCH_CUDA_ARCH_LIST} "${_list}+PTX")
  set(CMAKE_CUDA_ARCHITECTURES "${AGATE_CUDA_ARCHS}")
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)
  find_package(Torch REQUIRED)
else()
  # The CPU flavour. A CUDA wheel's TorchConfig insists on the CUDA toolkit, so without one
  # the CPU libraries are imported directly (libtorch_cpu carries every CPU kernel).
  if(AGATE_TORCH_CUDA AND NOT AGATE_USE_CUDA STREQUAL "OFF")
    message(STATUS "agate: torch ${AGATE_TORCH_VERSION} is a CUDA build but nvcc was not found: CPU flavour")
  endif()
  set(ENV{TORCH_CUDA_ARCH_LIST} "8.0 9.0")
  if(AGATE_TORCH_CUDA)
    get_filename_component(_torch_root "${_agate_torch_prefix}/../.." ABSOLUTE)
    add_library(agate_torch_cpu INTERFACE)
    target_include_directories(agate_torch_cpu SYSTEM INTERFACE "${_torch_root}/include"
                               "${_torch_root}/include/torch/csrc/api/include")
    target_compile_definitions(agate_torch_cpu INTERFACE _GLIBCXX_USE_CXX11_ABI=1 USE_C10D_GLOO USE_DISTRIBUTED)
    target_link_libraries(agate_torch_cpu INTERFACE
      "-Wl,--no-as-needed" "${_torch_root}/lib/libtorch_cpu.so" "-Wl,--as-needed"
      "${_torch_root}/lib/libtorch.so" "${_torch_root}/lib/libc10.so")
    set(TORCH_LIBRARIES agate_torch_cpu)
    set(TORCH_INCLUDE_DIRS "${_torch_root}/include;${_torch_root}/include/torch/csrc/api/include")
  else()
    find_package(Torch REQUIRED)
  endif()
endif()
message(STATUS "agate: torch ${AGATE_TORCH_VERSION} (CUDA ${AGATE_TORCH_CUDA}) from ${_agate_torch_prefix}; CUDA kernels: ${AGATE_CUDA}")
