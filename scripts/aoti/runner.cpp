// Runs an AOTInductor package of a model with IC convolutions from C++, without Python code.
//
//   runner <package.pt2> <libcore.so> <libpython.so> <input.bin> <expected.bin> N C H W
//
// The package calls the ic_networks op through AOTInductor's proxy executor, which looks the op up
// in libtorch's dispatcher, so the op library must be loaded and registered first: dlopen the
// ic_networks extension module (it links libpython symbols, so libpython goes first, RTLD_GLOBAL)
// and call its ic_networks_register_ops(). The input and the expected output are raw float32 files.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <vector>

static std::vector<float> read_floats(const char* path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  std::vector<float> v(static_cast<size_t>(f.tellg()) / sizeof(float));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

int main(int argc, char** argv) {
  if (argc != 10) {
    std::cerr << "usage: runner package.pt2 libcore.so libpython.so input.bin expected.bin N C H W\n";
    return 2;
  }
  if (!dlopen(argv[3], RTLD_NOW | RTLD_GLOBAL)) {
    std::cerr << "dlopen libpython: " << dlerror() << "\n";
    return 1;
  }
  void* lib = dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    std::cerr << "dlopen op library: " << dlerror() << "\n";
    return 1;
  }
  auto reg = reinterpret_cast<int (*)(char*, size_t)>(dlsym(lib, "ic_networks_register_ops"));
  char err[2048] = {0};
  if (!reg || reg(err, sizeof err) != 0) {
    std::cerr << "ic_networks_register_ops failed: " << err << "\n";
    return 1;
  }
  std::vector<float> in = read_floats(argv[4]), want = read_floats(argv[5]);
  const int64_t n = std::atoll(argv[6]), c = std::atoll(argv[7]), h = std::atoll(argv[8]), w = std::atoll(argv[9]);
  at::Tensor x = at::from_blob(in.data(), {n, c, h, w}, at::kFloat).clone();
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  std::vector<at::Tensor> out = loader.run({x});
  at::Tensor expected = at::from_blob(want.data(), {static_cast<int64_t>(want.size())}, at::kFloat);
  const double diff = (out[0].flatten() - expected).abs().max().item<double>();
  std::printf("output %s, max |C++ - Python eager| = %.3g\n", c10::str(out[0].sizes()).c_str(), diff);
  return diff < 1e-4 ? 0 : 3;
}
