// The boundary's error convention on the C++ side (src/c_abi.rs says it whole): a function returns
// ICN_OK, or the kind of its error after handing the message to the caller's IcnErrorSink once.
// The types and codes come from the header build.rs generates from the Rust sources.
#pragma once
#include "ic_networks_ffi.h"

#include <cstddef>
#include <cstring>
#include <string>

namespace icn {

// Hands `msg` to the caller's sink and returns `code`, so a catch block can `return icn::report(...)`.
inline int report(IcnErrorSink sink, int code, const char* msg) {
    if (sink.set != nullptr) sink.set(sink.ctx, msg, std::strlen(msg));
    return code;
}

// A sink that stores the message in `*s`, for calls into Rust.
inline IcnErrorSink sink_into(std::string* s) {
    return IcnErrorSink{
        s, [](void* ctx, const char* msg, size_t len) { static_cast<std::string*>(ctx)->assign(msg, len); }};
}

}  // namespace icn
