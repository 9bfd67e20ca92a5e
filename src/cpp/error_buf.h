// Passing a C++ error message back to Rust through a caller-owned buffer (the `err`/`err_len`
// arguments of the extern "C" entry points).
#pragma once
#include <cstddef>
#include <cstring>

namespace icn {

// Copies `msg` into `err` (at most err_len - 1 bytes, always NUL-terminated). Returns 1, the
// entry points' failure code, so a catch block can `return icn::write_error(...)`.
inline int write_error(char* err, size_t err_len, const char* msg) {
    if (err_len > 0) {
        std::strncpy(err, msg, err_len - 1);
        err[err_len - 1] = '\0';
    }
    return 1;
}

}  // namespace icn
