// A C++17 client of the tr0n-rt bundle format, version 2: the C++ twin of examples/reference_client.py.
//
// It uses the ONNX Runtime C/C++ API, nlohmann/json, zlib and the C++ standard library, and reproduces
// `tr0n-rt sample` bit for bit: the same PNG pixels and the same float32 energies.
//
//     tr0n_client engines/shapes "a red star" "a blue circle" --samples 2 --out out_cpp
//     tr0n_client engines/digits 3 "digit 7" --precision fp16 --out out_cpp
//
// Writes OUT/000.png, 001.png, ... (row i * samples + j: query i, seed SEED + j) and OUT/client.json with
// each image's query, seed and final energy. Sampling settings are the manifest's ("sampling"; sample
// mode's candidates 1 and start_noise 0 when absent); --steps, --copies, --mode, --init, the step sizes,
// --candidates and --start-noise override them.
//
// Build: examples/cpp/build.sh BUILD_DIR, which compiles with
//
//     g++ -std=c++17 -O2 -ffp-contract=off
//
// -ffp-contract=off is REQUIRED: the noise scheme (Philox4x32-10, AS241, the hand-written log and exp) and
// the mixture arithmetic are specified as IEEE-754 basic operations, each rounded on its own. A compiler that
// fuses a * b + c into one fused multiply-add (GCC does by default wherever the target has FMA: aarch64,
// or x86-64 with -march=native) changes the last bits, and then the images. -ffast-math (which reorders
// and contracts) is refused below; so is x87 excess precision (FLT_EVAL_METHOD != 0).
//
// Extra modes, for tests and for porting the scheme to other languages:
//     tr0n_client --sha256 FILE...                       SHA-256 of files (sha256sum's format)
//     tr0n_client --noise normal|uniform|words SEED STREAM STEP N   N draws, one bit pattern (hex) a line
//     tr0n_client --philox C0 C1 C2 C3 K0 K1              one Philox4x32-10 block (hex words)
//     tr0n_client --mix L0,L1,.. M0,M1,..                  the mixture latent of K logits and means (D = 1)
//     tr0n_client --math log|exp|ndtri                    float64 bit patterns (hex) on stdin, f(x) on stdout

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#define ORT_API_MANUAL_INIT  // GetApi is checked by hand: an older runtime gets a message, not a crash
#include <onnxruntime_cxx_api.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include "sha256.hpp"

#if defined(__FAST_MATH__)
#error "compile without -ffast-math: the noise scheme needs IEEE-754 basic operations, each rounded"
#endif
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "float and double expressions must be evaluated in their own precision (FLT_EVAL_METHOD 0; x87 is not)"
#endif
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int kFormatVersion = 2;

struct BundleProblem : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --- tensors -----------------------------------------------------------------------------------------
struct Tensor {  // float32, or int64 when is_int; row-major
  std::vector<int64_t> shape;
  std::vector<float> f;
  std::vector<int64_t> i;
  bool is_int = false;
};

size_t numel(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t s : shape) n *= static_cast<size_t>(s);
  return n;
}

Tensor floats(std::vector<int64_t> shape, float fill = 0.0f) {
  Tensor t;
  t.shape = std::move(shape);
  t.f.assign(numel(t.shape), fill);
  return t;
}

// --- files -------------------------------------------------------------------------------------------
std::vector<uint8_t> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BundleProblem("cannot read " + path.string());
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return data;
}

// (size, sha256) of a file, read in pieces.
std::pair<uint64_t, std::string> file_digest(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BundleProblem("cannot read " + path.string());
  tr0n::Sha256 h;
  std::vector<char> buf(1 << 20);
  uint64_t total = 0;
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    std::streamsize got = in.gcount();
    if (got > 0) h.update(buf.data(), static_cast<size_t>(got)), total += static_cast<uint64_t>(got);
  }
  if (in.bad()) throw BundleProblem("error reading " + path.string());
  return {total, h.hexdigest()};
}

// --- the bundle: manifest, checksums, sessions -------------------------------------------------------
json open_bundle(const fs::path& folder) {
  std::vector<uint8_t> text = read_file(folder / "manifest.json");
  json m = json::parse(text.begin(), text.end());
  if (!m.is_object() || m.value("format", json()) != "tr0n-rt.bundle" ||
      m.value("schema_version", json()) != kFormatVersion)
    throw BundleProblem(folder.string() + " is not a version " + std::to_string(kFormatVersion) +
                        " tr0n-rt bundle (schema_version " +
                        (m.is_object() ? m.value("schema_version", json()).dump() : "?") + ")");
  json want_noise = {{"scheme", "philox4x32-10"}, {"version", 1}};
  if (m.value("noise", json()) != want_noise)
    throw BundleProblem("unknown noise scheme " + m.value("noise", json()).dump());
  for (const char* field : {"files", "sources"}) {  // every file, checked before use
    for (auto& [name, meta] : m.at(field).items()) {
      fs::path p(name);
      bool leaves = p.is_absolute() || name.empty();
      for (const auto& part : p) leaves = leaves || part == "..";
      if (leaves) throw BundleProblem("file name " + json(name).dump() + " leaves the bundle");
      if (!fs::is_regular_file(folder / p)) throw BundleProblem(name + " is listed in the manifest but missing");
      auto [bytes, sha] = file_digest(folder / p);
      uint64_t want_bytes = meta.at("bytes").get<uint64_t>();
      std::string want_sha = meta.at("sha256").get<std::string>();
      if (bytes != want_bytes || sha != want_sha)
        throw BundleProblem(name + " does not match its sha256 in the manifest (" + std::to_string(bytes) +
                            " bytes, sha256 " + sha + "; manifest: " + std::to_string(want_bytes) + " bytes, " +
                            want_sha + ")");
    }
  }
  return m;
}

GraphOptimizationLevel optimization_level(const std::string& name) {
  if (name == "ORT_DISABLE_ALL") return ORT_DISABLE_ALL;
  if (name == "ORT_ENABLE_BASIC") return ORT_ENABLE_BASIC;
  if (name == "ORT_ENABLE_EXTENDED") return ORT_ENABLE_EXTENDED;
  if (name == "ORT_ENABLE_LAYOUT") return ORT_ENABLE_LAYOUT;
  if (name == "ORT_ENABLE_ALL") return ORT_ENABLE_ALL;
  throw BundleProblem("unknown onnxruntime graph_optimization_level " + name);
}

class Graphs {
 public:
  Graphs(Ort::Env& env, fs::path folder, const json& manifest, std::string precision)
      : env_(env), folder_(std::move(folder)), m_(manifest), precision_(std::move(precision)) {
    const json& settings = m_.at("onnxruntime");
    std::string level = settings.at("graph_optimization_level").get<std::string>();
    if (precision_ == "fp16")  // this client runs on the CPU
      level = settings.at("fp16_graphs_on_cpu").at("graph_optimization_level").get<std::string>();
    level_ = optimization_level(level);
  }

  // Runs a graph on feeds (exactly its inputs) and returns all its outputs by name.
  std::map<std::string, Tensor> run(const std::string& graph, const std::map<std::string, Tensor>& feeds) {
    Ort::Session& s = session(graph);
    Ort::AllocatorWithDefaultOptions alloc;
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<std::string> in_names, out_names;
    std::vector<Ort::Value> inputs;
    for (size_t k = 0; k < s.GetInputCount(); ++k) {
      std::string name = s.GetInputNameAllocated(k, alloc).get();
      auto it = feeds.find(name);
      if (it == feeds.end()) throw BundleProblem(graph + " has an input " + name + " that this client does not feed");
      const Tensor& t = it->second;
      ONNXTensorElementDataType want = s.GetInputTypeInfo(k).GetTensorTypeAndShapeInfo().GetElementType();
      ONNXTensorElementDataType have =
          t.is_int ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      if (want != have)
        throw BundleProblem(graph + " input " + name + " has element type " + std::to_string(want) +
                            "; this client feeds " + (t.is_int ? "int64" : "float32"));
      if (t.is_int)
        inputs.push_back(Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(t.i.data()), t.i.size(),
                                                           t.shape.data(), t.shape.size()));
      else
        inputs.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(t.f.data()), t.f.size(),
                                                         t.shape.data(), t.shape.size()));
      in_names.push_back(name);
    }
    for (const auto& kv : feeds) {
      bool known = false;
      for (const auto& n : in_names) known = known || n == kv.first;
      if (!known) throw BundleProblem(graph + " has no input " + kv.first);
    }
    for (size_t k = 0; k < s.GetOutputCount(); ++k) out_names.push_back(s.GetOutputNameAllocated(k, alloc).get());
    std::vector<const char*> in_c, out_c;
    for (auto& n : in_names) in_c.push_back(n.c_str());
    for (auto& n : out_names) out_c.push_back(n.c_str());
    auto outs = s.Run(Ort::RunOptions{nullptr}, in_c.data(), inputs.data(), inputs.size(), out_c.data(), out_c.size());
    std::map<std::string, Tensor> result;
    for (size_t k = 0; k < outs.size(); ++k) {
      auto info = outs[k].GetTensorTypeAndShapeInfo();
      if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        throw BundleProblem(graph + " output " + out_names[k] + " is not float32");
      Tensor t;
      t.shape = info.GetShape();
      const float* p = outs[k].GetTensorData<float>();
      t.f.assign(p, p + info.GetElementCount());
      result[out_names[k]] = std::move(t);
    }
    return result;
  }

 private:
  Ort::Session& session(const std::string& graph) {
    auto it = sessions_.find(graph);
    if (it != sessions_.end()) return *it->second;
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(level_);
    so.SetLogSeverityLevel(3);
    std::string file = m_.at("graphs").at(graph).at("files").at(precision_).get<std::string>();
    auto s = std::make_unique<Ort::Session>(env_, (folder_ / file).c_str(), so);  // CPU execution provider
    return *(sessions_[graph] = std::move(s));
  }

  Ort::Env& env_;
  fs::path folder_;
  const json& m_;
  std::string precision_;
  GraphOptimizationLevel level_;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
};

// --- conditions: tokenizers and classes -------------------------------------------------------------
void require_ascii(const std::string& q) {
  for (unsigned char ch : q)
    if (ch >= 128)
      throw BundleProblem("this C++ client takes ASCII queries only (Unicode lower-casing, NFC and letter "
                          "classes are left out): " + json(q).dump());
}

// Lower-cased text split into runs of letters (ASCII: the spec's NFC and Unicode categories L* agree).
std::vector<std::string> letter_words(const std::string& text) {
  std::vector<std::string> words;
  std::string cur;
  for (unsigned char ch : text) {
    char c = static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
    if (c >= 'a' && c <= 'z') {
      cur.push_back(c);
    } else if (!cur.empty()) {
      words.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) words.push_back(cur);
  return words;
}

std::vector<int64_t> word_tokens(const json& tok, const std::string& prompt) {
  const json& vocab = tok.at("vocab");
  std::map<std::string, int64_t> ids;
  for (size_t k = 0; k < vocab.size(); ++k) ids.emplace(vocab[k].get<std::string>(), static_cast<int64_t>(k) + 2);
  json aliases = tok.contains("aliases") && !tok["aliases"].is_null() ? tok["aliases"] : json::object();
  int64_t n = static_cast<int64_t>(vocab.size());
  std::vector<int64_t> out{n + 2};  // start, words (0 pad, 1 unknown, then the vocabulary), end
  for (const auto& w : letter_words(prompt)) {
    std::string key = aliases.contains(w) ? aliases[w].get<std::string>() : w;
    auto it = ids.find(key);
    out.push_back(it == ids.end() ? 1 : it->second);
  }
  out.push_back(n + 3);
  return out;
}

std::string python_strip_lower(const std::string& s) {  // str.strip().lower() for ASCII
  const char* space = " \t\n\v\f\r\x1c\x1d\x1e\x1f";
  size_t a = s.find_first_not_of(space), b = s.find_last_not_of(space);
  std::string t = a == std::string::npos ? "" : s.substr(a, b - a + 1);
  for (char& c : t)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return t;
}

Tensor conditions(const json& m, Graphs& graphs, const std::vector<std::string>& queries) {
  for (const auto& q : queries) require_ascii(q);
  int64_t nq = static_cast<int64_t>(queries.size());
  std::string kind = m.at("condition").at("kind").get<std::string>();
  if (kind == "class") {
    const json& names = m.at("condition").at("classes");
    Tensor c = floats({nq, static_cast<int64_t>(names.size())});
    for (int64_t i = 0; i < nq; ++i) {
      std::string key = python_strip_lower(queries[i]);
      for (const char* prefix : {"digit ", "class "})
        if (key.rfind(prefix, 0) == 0) key = key.substr(std::strlen(prefix));
      size_t k = 0;
      while (k < names.size() && names[k].get<std::string>() != key) ++k;
      if (k == names.size()) throw BundleProblem(json(queries[i]).dump() + " is not a class of this bundle (" +
                                                 names.dump() + ")");
      c.f[i * names.size() + k] = 1.0f;
    }
    return c;
  }
  if (kind != "text") throw BundleProblem("condition kind " + kind + " is not supported by this client");
  const json& tok = m.at("tokenizer");
  std::string tkind = tok.at("kind").get<std::string>();
  if (tkind == "clip_bpe")
    throw BundleProblem("this bundle uses CLIP's BPE tokenizer (tokenizer.kind \"clip_bpe\"), which this C++ client "
                        "leaves out; use examples/reference_client.py for it");
  if (tkind != "words") throw BundleProblem("unknown tokenizer kind " + tkind);
  int64_t n = tok.at("context_length").get<int64_t>();
  Tensor rows;
  rows.is_int = true;
  rows.shape = {nq, n};
  rows.i.assign(static_cast<size_t>(nq * n), 0);
  for (int64_t i = 0; i < nq; ++i) {
    std::vector<int64_t> t = word_tokens(tok, queries[i]);
    if (static_cast<int64_t>(t.size()) > n) {  // too long: cut, the end token kept last
      int64_t end = t.back();
      t.resize(static_cast<size_t>(n));
      t.back() = end;
    }
    std::copy(t.begin(), t.end(), rows.i.begin() + i * n);
  }
  return graphs.run("text_encoder", {{"tokens", rows}}).at("condition");
}

// --- the noise scheme (spec: "Noise"; tr0n_rt/noise.py) ------------------------------------------------
// Every float64 operation below is one IEEE-754 basic operation, rounded on its own, in the order of
// tr0n_rt/noise.py (hence -ffp-contract=off).
enum Stream : uint32_t { INIT = 1, COMPONENT = 2, AUGMENT = 3, SGLD = 4, START = 5 };

void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
    uint64_t p0 = uint64_t{0xD2511F53u} * c[0], p1 = uint64_t{0xCD9E8D57u} * c[2];
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0, n1 = static_cast<uint32_t>(p1);
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1, n3 = static_cast<uint32_t>(p0);
    c[0] = n0, c[1] = n1, c[2] = n2, c[3] = n3;
  }
}

// The first n words of draw (stream, step) for one seed: counter (block j, step, stream, 0),
// key (seed mod 2^32, seed div 2^32).
std::vector<uint32_t> draw_words(uint64_t seed, uint32_t stream, uint32_t step, size_t n) {
  std::vector<uint32_t> w(n);
  for (size_t j = 0; 4 * j < n; ++j) {
    uint32_t c[4] = {static_cast<uint32_t>(j), step, stream, 0};
    philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    for (size_t k = 0; k < 4 && 4 * j + k < n; ++k) w[4 * j + k] = c[k];
  }
  return w;
}

double horner(const double* c, int n, double x) {  // ((c[n-1] x + c[n-2]) x + ...) x + c[0]
  double acc = c[n - 1];
  for (int k = n - 2; k >= 0; --k) acc = acc * x + c[k];
  return acc;
}

const double kLn2 = 0x1.62e42fefa39efp-1, kLn2Hi = 0x1.62e42fee00000p-1, kLn2Lo = 0x1.a39ef35793c76p-33;
const double kLog2e = 0x1.71547652b82fep+0, kSqrtHalf = 0x1.6a09e667f3bcdp-1;

struct Coefficients {
  double log[12], exp[14];
  Coefficients() {
    for (int k = 0; k < 12; ++k) log[k] = 1.0 / static_cast<double>(2 * k + 1);  // atanh series
    double fact = 1.0;  // k! is exact in float64 for k <= 13
    for (int k = 0; k < 14; ++k) {
      if (k) fact = fact * k;
      exp[k] = 1.0 / fact;
    }
  }
};
const Coefficients kCoef;

double log64(double x) {  // x = m 2^e, m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s), s = (m - 1) / (m + 1)
  int e = 0;
  double m = std::frexp(x, &e);
  if (m < kSqrtHalf) m = m * 2.0, e = e - 1;
  double f = m - 1.0;
  double s = f / (f + 2.0);
  return static_cast<double>(e) * kLn2 + (2.0 * s) * horner(kCoef.log, 12, s * s);
}

double exp64(double x) {  // x <= 0 (0 below -708): x = n ln2 + r (Cody-Waite), e^r by Taylor to r^13
  if (std::isnan(x)) return x;
  if (x < -708.0) return 0.0;
  double n = std::floor(x * kLog2e + 0.5);
  double r = (x - n * kLn2Hi) - n * kLn2Lo;
  double nc = n < -1100.0 ? -1100.0 : (n > 1100.0 ? 1100.0 : n);
  return std::ldexp(horner(kCoef.exp, 14, r), static_cast<int>(nc));
}

// Wichura, AS241 (Applied Statistics 37(3), 1988), coefficients of x^0 .. x^7.
const double kA[8] = {3.3871328727963666080e+0, 1.3314166789178437745e+2, 1.9715909503065514427e+3,
                      1.3731693765509461125e+4, 4.5921953931549871457e+4, 6.7265770927008700853e+4,
                      3.3430575583588128105e+4, 2.5090809287301226727e+3};
const double kB[8] = {1.0, 4.2313330701600911252e+1, 6.8718700749205790830e+2, 5.3941960214247511077e+3,
                      2.1213794301586595867e+4, 3.9307895800092710610e+4, 2.8729085735721942674e+4,
                      5.2264952788528545610e+3};
const double kC[8] = {1.42343711074968357734e+0, 4.63033784615654529590e+0, 5.76949722146069140550e+0,
                      3.64784832476320460504e+0, 1.27045825245236838258e+0, 2.41780725177450611770e-1,
                      2.27238449892691845833e-2, 7.74545014278341407640e-4};
const double kD[8] = {1.0, 2.05319162663775882187e+0, 1.67638483018380384940e+0, 6.89767334985100004550e-1,
                      1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
                      1.05075007164441684324e-9};
const double kE[8] = {6.65790464350110377720e+0, 5.46378491116411436990e+0, 1.78482653991729133580e+0,
                      2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
                      2.71155556874348757815e-5, 2.01033439929228813265e-7};
const double kF[8] = {1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
                      7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
                      2.04426310338993978564e-15};

double ndtri(double p) {
  double q = p - 0.5;
  if (std::fabs(q) <= 0.425) {
    double r = 0.180625 - q * q;
    return q * horner(kA, 8, r) / horner(kB, 8, r);
  }
  double r = std::sqrt(-log64(q < 0.0 ? p : 1.0 - p));
  double x;
  if (r <= 5.0) {
    double rn = r - 1.6;
    x = horner(kC, 8, rn) / horner(kD, 8, rn);
  } else {
    double rf = r - 5.0;
    x = horner(kE, 8, rf) / horner(kF, 8, rf);
  }
  return q < 0.0 ? -x : x;
}

// float32 [B, *shape] in [0, 1): (w >> 8) * 2^-24, row-major.
std::vector<float> uniforms(const std::vector<uint64_t>& seeds, uint32_t stream, uint32_t step, size_t n) {
  std::vector<float> out;
  for (uint64_t s : seeds)
    for (uint32_t w : draw_words(s, stream, step, n)) out.push_back(static_cast<float>(w >> 8) * 0x1p-24f);
  return out;
}

// float32 [B, *shape]: float32(ndtri((w + 0.5) * 2^-32)), row-major.
std::vector<float> normals(const std::vector<uint64_t>& seeds, uint32_t stream, uint32_t step, size_t n) {
  std::vector<float> out;
  for (uint64_t s : seeds)
    for (uint32_t w : draw_words(s, stream, step, n))
      out.push_back(static_cast<float>(ndtri((static_cast<double>(w) + 0.5) * 0x1p-32)));
  return out;
}

// float64 softmax over axis 1 of logits [B, K, D] (D = 1 for [B, K]): exp(l_k - max l) / sum_k, the sum
// in order k = 0, 1, ...
std::vector<double> softmax64(const float* logits, size_t b, size_t k, size_t d) {
  std::vector<double> out(b * k * d);
  for (size_t i = 0; i < b; ++i)
    for (size_t j = 0; j < d; ++j) {
      const float* x = logits + i * k * d + j;
      double mx = static_cast<double>(x[0]);
      for (size_t c = 1; c < k; ++c) {  // as numpy's max: a NaN wins
        double v = static_cast<double>(x[c * d]);
        if (!std::isnan(mx) && (std::isnan(v) || v > mx)) mx = v;
      }
      double* e = out.data() + i * k * d + j;
      for (size_t c = 0; c < k; ++c) e[c * d] = exp64(static_cast<double>(x[c * d]) - mx);
      double total = e[0];
      for (size_t c = 1; c < k; ++c) total = total + e[c * d];
      for (size_t c = 0; c < k; ++c) e[c * d] = e[c * d] / total;
    }
  return out;
}

// The final latent: sum_k softmax_k(logits) * means_k per latent dimension; logits, means float32
// [B, K, D] -> float32 [B, D]; float64 weights and products, summed in order k = 0, 1, ...
std::vector<float> mix(const float* logits, const float* means, size_t b, size_t k, size_t d) {
  std::vector<double> w = softmax64(logits, b, k, d);
  std::vector<float> out(b * d);
  for (size_t i = 0; i < b; ++i)
    for (size_t x = 0; x < d; ++x) {
      double acc = w[i * k * d + x] * static_cast<double>(means[i * k * d + x]);
      for (size_t j = 1; j < k; ++j)
        acc = acc + w[(i * k + j) * d + x] * static_cast<double>(means[(i * k + j) * d + x]);
      out[i * d + x] = static_cast<float>(acc);
    }
  return out;
}

// --- sampling (spec: "Sampling") ----------------------------------------------------------------------
struct Settings {
  std::string mode, init;
  int64_t steps = 0, copies = 0;
  int64_t chunk = 0;  // > 0: the chunked step (spec section 3) in chunks of this many copies
  int64_t candidates = 1;  // sample mode: draws of z0, the lowest energy kept
  double start_noise = 0.0;  // sample mode: std of the extra start noise (stream START)
  std::map<std::string, double> h;  // latent_lr, momentum, noise_std, logits_lr, clip_norm, adam_eps, aesthetic_weight
};

// Ranges of sample mode's start settings, as tr0n_rt/settings.py's RANGES (and the manifest schema).
constexpr int64_t kMaxCandidates = 64;
constexpr double kMaxStartNoise = 100.0;

const float kIdentityAug[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 2.0f, 2.0f};

bool truthy(const json& j) {  // Python's bool() of a JSON value
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number()) return j.get<double>() != 0.0;
  if (j.is_string()) return !j.get<std::string>().empty();
  return !j.empty();  // arrays and objects
}

struct Result {
  Tensor images;
  std::vector<float> energy;
};

Result sample(const json& m, Graphs& graphs, const Tensor& c, const std::vector<uint64_t>& seeds, const Settings& cfg) {
  const int64_t b = static_cast<int64_t>(seeds.size()), d = m.at("latent").at("dim").get<int64_t>();
  const int64_t steps = cfg.steps, copies = cfg.copies;
  auto aug_noise = [&](int64_t t) {
    if (copies == 0) {
      Tensor a = floats({b, 1, 8});
      for (int64_t i = 0; i < b; ++i) std::copy(kIdentityAug, kIdentityAug + 8, a.f.begin() + i * 8);
      return a;
    }
    Tensor a;
    a.shape = {b, copies, 8};
    a.f = uniforms(seeds, AUGMENT, static_cast<uint32_t>(t), static_cast<size_t>(copies * 8));
    return a;
  };
  // copies first .. first + n - 1 of aug [b, A, 8], as [b, n, 8]
  auto copies_of = [&](const Tensor& aug, int64_t first, int64_t n) {
    const int64_t a = aug.shape.at(1);
    Tensor part = floats({b, n, 8});
    for (int64_t i = 0; i < b; ++i)
      std::copy_n(aug.f.begin() + (i * a + first) * 8, n * 8, part.f.begin() + i * n * 8);
    return part;
  };
  // The energy graph on latent [b, d] -> energies [b]; chunked: the sum of float64(E_j) * (m_j / A) over the
  // chunks of copies, in chunk order, rounded to float32 (spec section 6, step 4).
  auto energy_of = [&](const Tensor& latent, const Tensor& aug) {
    if (cfg.chunk <= 0)
      return graphs.run("energy", {{"latent", latent}, {"condition", c}, {"aug_noise", aug}}).at("energy").f;
    const int64_t a = aug.shape.at(1);
    std::vector<double> total(static_cast<size_t>(b), 0.0);
    for (int64_t first = 0; first < a; first += cfg.chunk) {
      const int64_t n = std::min(cfg.chunk, a - first);
      Tensor e = graphs.run("energy", {{"latent", latent}, {"condition", c}, {"aug_noise", copies_of(aug, first, n)}})
                     .at("energy");
      for (int64_t i = 0; i < b; ++i)
        total[i] = total[i] + static_cast<double>(e.f[i]) * (static_cast<double>(n) / static_cast<double>(a));
    }
    return std::vector<float>(total.begin(), total.end());  // float64 -> float32, rounded to nearest
  };
  const json& bounds = m.at("latent").at("bounds");

  Tensor means, logits;  // [b, K', d] each
  if (cfg.init == "prior") {
    means = floats({b, 1, d});
    means.f = normals(seeds, INIT, 0, static_cast<size_t>(d));
    if (!bounds.is_null()) {
      float hi = static_cast<float>(bounds.get<double>()), lo = -hi;  // np.clip in float32
      for (float& v : means.f) v = std::min(std::max(v, lo), hi);
    }
    logits = floats({b, 1, d});
  } else {
    auto tr = graphs.run("translator", {{"condition", c}});
    const Tensor &tl = tr.at("logits"), &tm = tr.at("means"), &ts = tr.at("std");
    const int64_t k = tl.shape.at(1);
    if (cfg.mode == "mixture" && steps == 0) {  // the most likely component's mean
      means = floats({b, 1, d});
      for (int64_t i = 0; i < b; ++i) {
        int64_t best = 0;
        for (int64_t j = 1; j < k; ++j)
          if (tl.f[i * k + j] > tl.f[i * k + best]) best = j;
        std::copy_n(tm.f.begin() + (i * k + best) * d, d, means.f.begin() + i * d);
      }
      logits = floats({b, 1, d});
    } else if (cfg.mode == "mixture") {  // all K means; logits repeated over the latent dimensions
      means = tm;
      logits = floats({b, k, d});
      for (int64_t i = 0; i < b; ++i)
        for (int64_t j = 0; j < k; ++j)
          std::fill_n(logits.f.begin() + (i * k + j) * d, d, tl.f[i * k + j]);
    } else {  // sample: candidate j picks a component by uniform j, then z_j = mean + std * normal j (+ start noise)
      std::vector<double> probs = softmax64(tl.f.data(), static_cast<size_t>(b), static_cast<size_t>(k), 1);
      const float s = static_cast<float>(cfg.start_noise);  // float32(start_noise), rounded to nearest
      std::vector<Tensor> draws;
      for (int64_t cand = 0; cand < cfg.candidates; ++cand) {
        const auto step = static_cast<uint32_t>(cand);
        std::vector<float> u = uniforms(seeds, COMPONENT, step, 1);
        std::vector<float> z = normals(seeds, INIT, step, static_cast<size_t>(d));
        std::vector<float> extra;
        if (s != 0.0f) extra = normals(seeds, START, step, static_cast<size_t>(d));
        Tensor zj = floats({b, d});
        for (int64_t i = 0; i < b; ++i) {
          double cum = probs[i * k];
          int64_t pick = k - 1;
          bool done = false;
          for (int64_t j = 0; j < k; ++j) {
            if (j) cum = cum + probs[i * k + j];
            if (!done && static_cast<double>(u[i]) < cum) pick = j, done = true;
          }
          for (int64_t x = 0; x < d; ++x) {
            float prod = ts.f[x] * z[i * d + x];  // float32: the product rounded, then the sum
            float v = tm.f[(i * k + pick) * d + x] + prod;
            if (s != 0.0f) {
              float more = s * extra[i * d + x];  // the same way
              v = v + more;
            }
            zj.f[i * d + x] = v;
          }
        }
        if (!bounds.is_null()) {
          float hi = static_cast<float>(bounds.get<double>()), lo = -hi;  // np.clip in float32 (NaN stays NaN)
          for (float& v : zj.f) v = std::min(std::max(v, lo), hi);
        }
        draws.push_back(std::move(zj));
      }
      std::vector<size_t> best(static_cast<size_t>(b), 0);  // one candidate: z_0
      if (draws.size() > 1) {  // the lowest energy with step 0's aug_noise; the first of equals, NaN as +inf
        const Tensor aug0 = aug_noise(0);
        std::vector<float> lowest(static_cast<size_t>(b), 0.0f);
        for (size_t cand = 0; cand < draws.size(); ++cand) {
          std::vector<float> e = energy_of(draws[cand], aug0);
          for (int64_t i = 0; i < b; ++i) {
            float v = std::isnan(e[i]) ? INFINITY : e[i];
            if (cand == 0 || v < lowest[i]) lowest[i] = v, best[i] = cand;
          }
        }
      }
      means = floats({b, 1, d});
      for (int64_t i = 0; i < b; ++i)
        std::copy_n(draws[best[i]].f.begin() + i * d, d, means.f.begin() + i * d);
      logits = floats({b, 1, d});
    }
  }

  Result res;
  Tensor latent = floats({b, d});
  if (steps == 0) {
    latent.f = means.f;  // [b, 1, d] -> [b, d]
    res.energy.assign(static_cast<size_t>(b), std::nanf(""));
  } else {
    const int64_t k = means.shape.at(1);
    std::map<std::string, Tensor> state = {{"means", means},
                                           {"logits", logits},
                                           {"velocity", floats(means.shape)},
                                           {"adam_m", floats(means.shape)},
                                           {"adam_v", floats(means.shape)},
                                           {"step", floats({1})}};
    std::map<std::string, Tensor> fixed = {{"condition", c}};
    for (const char* h : {"latent_lr", "momentum", "noise_std", "logits_lr", "clip_norm", "adam_eps"})
      fixed[h] = floats({1}, static_cast<float>(cfg.h.at(h)));
    if (truthy(m.value("aesthetic", json())))
      fixed["aesthetic_weight"] = floats({1}, static_cast<float>(cfg.h.at("aesthetic_weight")));
    Tensor z = floats({b, d});  // the chunked step's generator input: the mixture of the state
    if (cfg.chunk > 0)
      z.f = mix(state.at("logits").f.data(), state.at("means").f.data(), static_cast<size_t>(b),
                static_cast<size_t>(k), static_cast<size_t>(d));
    for (int64_t t = 0; t < steps; ++t) {
      Tensor sgld;
      sgld.shape = {b, k, d};
      sgld.f = normals(seeds, SGLD, static_cast<uint32_t>(t), static_cast<size_t>(k * d));
      if (cfg.chunk > 0) {  // generator, energy_grad per chunk of copies, update (spec section 3)
        Tensor aug = aug_noise(t), images = graphs.run("generator", {{"latent", z}}).at("images");
        const int64_t a = aug.shape.at(1);
        Tensor grad_sum = floats(images.shape), energy_sum = floats({b});
        for (int64_t first = 0; first < a; first += cfg.chunk) {
          std::map<std::string, Tensor> feeds = {{"images", images},
                                                 {"condition", c},
                                                 {"aug_noise", copies_of(aug, first, std::min(cfg.chunk, a - first))},
                                                 {"copies", floats({1}, static_cast<float>(a))},
                                                 {"grad_sum", grad_sum},
                                                 {"energy_sum", energy_sum}};
          if (fixed.count("aesthetic_weight")) feeds["aesthetic_weight"] = fixed.at("aesthetic_weight");
          auto out = graphs.run("energy_grad", feeds);
          grad_sum = out.at("grad_sum_next"), energy_sum = out.at("energy_sum_next");
        }
        std::map<std::string, Tensor> feeds = state;
        for (const auto& kv : fixed)
          if (kv.first != "condition") feeds.insert(kv);
        feeds["grad_sum"] = grad_sum;
        feeds["sgld_noise"] = std::move(sgld);
        auto out = graphs.run("update", feeds);
        for (auto& kv : state) kv.second = out.at(kv.first + "_next");
        z = out.at("latent_next");
        continue;
      }
      std::map<std::string, Tensor> feeds = state;
      feeds.insert(fixed.begin(), fixed.end());
      feeds["aug_noise"] = aug_noise(t);
      feeds["sgld_noise"] = std::move(sgld);
      auto out = graphs.run("step", feeds);
      for (auto& kv : state) kv.second = out.at(kv.first + "_next");
    }
    latent.f = mix(state.at("logits").f.data(), state.at("means").f.data(), static_cast<size_t>(b),
                   static_cast<size_t>(k), static_cast<size_t>(d));
    res.energy = energy_of(latent, aug_noise(steps));
  }
  res.images = graphs.run("generator", {{"latent", latent}}).at("images");
  return res;
}

// --- output --------------------------------------------------------------------------------------------
void put32(std::string& s, uint32_t v) {
  for (int k = 3; k >= 0; --k) s.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
}

void chunk(std::string& png, const char* kind, const std::string& data) {
  put32(png, static_cast<uint32_t>(data.size()));
  std::string body = std::string(kind, 4) + data;
  png += body;
  uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
  put32(png, static_cast<uint32_t>(crc));
}

// [C, H, W] in [-1, 1] -> PNG bytes (8-bit RGB): clip((x + 1) * 127.5 + 0.5, 0, 255) in float32, truncated.
std::string png(const float* image, int64_t channels, int64_t h, int64_t w) {
  std::string raw;
  for (int64_t r = 0; r < h; ++r) {
    raw.push_back(0);  // filter: none
    for (int64_t x = 0; x < w; ++x)
      for (int64_t ch = 0; ch < 3; ++ch) {
        float v = image[((channels == 1 ? 0 : ch) * h + r) * w + x];
        float y = (v + 1.0f) * 127.5f;
        y = y + 0.5f;
        y = std::isnan(y) ? 0.0f : std::min(std::max(y, 0.0f), 255.0f);  // NaN: 0, as numpy on x86-64
        raw.push_back(static_cast<char>(static_cast<uint8_t>(y)));
      }
  }
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string z(size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(&z[0]), &size, reinterpret_cast<const Bytef*>(raw.data()),
                static_cast<uLong>(raw.size()), Z_DEFAULT_COMPRESSION) != Z_OK)
    throw std::runtime_error("zlib compress2 failed");
  z.resize(size);
  std::string ihdr;
  put32(ihdr, static_cast<uint32_t>(w));
  put32(ihdr, static_cast<uint32_t>(h));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit, RGB, deflate, no filter, no interlace
  std::string out("\x89PNG\r\n\x1a\n", 8);
  chunk(out, "IHDR", ihdr);
  chunk(out, "IDAT", z);
  chunk(out, "IEND", "");
  return out;
}

void write_file(const fs::path& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!f) throw std::runtime_error("cannot write " + path.string());
}

// A float32 energy as JSON: the shortest decimal that reads back as the same float64 (Python's repr of
// float(energy), at most 17 digits; 9 would round-trip the float32 but not its float64 value); non-finite
// values as null (as tr0n-rt's samples.json).
std::string energy_json(float e) {
  if (!std::isfinite(e)) return "null";
  const double v = static_cast<double>(e);
  char buf[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// --- command line -------------------------------------------------------------------------------------
const char* kUsage =
    "usage: tr0n_client BUNDLE QUERY [QUERY ...] --out OUT [--samples N] [--seed S] [--batch B]\n"
    "                   [--precision fp32|fp16] [--steps T] [--copies A] [--mode mixture|sample]\n"
    "                   [--init translator|prior] [--latent-lr X] [--momentum X] [--noise-std X]\n"
    "                   [--logits-lr X] [--aesthetic-weight X] [--chunk M]\n"
    "                   [--candidates N (1..64)] [--start-noise S (0..100)]\n"
    "       tr0n_client --sha256 FILE [FILE ...]\n"
    "       tr0n_client --noise normal|uniform|words SEED STREAM STEP N\n"
    "       tr0n_client --philox C0 C1 C2 C3 K0 K1\n"
    "       tr0n_client --mix L0,L1,... M0,M1,...\n"
    "       tr0n_client --math log|exp|ndtri   < hex float64 bit patterns, one a line\n"
    "A C++ client of the tr0n-rt bundle format (version 2): reproduces `tr0n-rt sample` bit for bit.\n";

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

uint64_t parse_u64(const std::string& s, const std::string& what) {
  if (s.empty() || s[0] == '-' || s[0] == '+') throw Usage(what + " must be a whole number >= 0, got " + s);
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno || *end) throw Usage(what + " must be a whole number in [0, 2^64), got " + s);
  return v;
}

double parse_double(const std::string& s, const std::string& what) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end) throw Usage(what + " must be a number, got " + s);
  return v;
}

int sha256_mode(const std::vector<std::string>& files) {
  for (const auto& f : files) std::printf("%s  %s\n", file_digest(f).second.c_str(), f.c_str());
  return 0;
}

int noise_mode(const std::vector<std::string>& a) {
  if (a.size() != 5 || (a[0] != "normal" && a[0] != "uniform" && a[0] != "words"))
    throw Usage("--noise normal|uniform|words SEED STREAM STEP N");
  std::vector<uint64_t> seed{parse_u64(a[1], "SEED")};
  auto stream = static_cast<uint32_t>(parse_u64(a[2], "STREAM")), step = static_cast<uint32_t>(parse_u64(a[3], "STEP"));
  size_t n = parse_u64(a[4], "N");
  if (a[0] == "words") {
    for (uint32_t w : draw_words(seed[0], stream, step, n)) std::printf("%08" PRIx32 "\n", w);
    return 0;
  }
  std::vector<float> v = a[0] == "normal" ? normals(seed, stream, step, n) : uniforms(seed, stream, step, n);
  for (float x : v) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    std::printf("%08" PRIx32 "\n", bits);
  }
  return 0;
}

int philox_mode(const std::vector<std::string>& a) {  // C0 C1 C2 C3 K0 K1 in hex -> the output block
  if (a.size() != 6) throw Usage("--philox C0 C1 C2 C3 K0 K1 (hex)");
  uint32_t v[6];
  for (int k = 0; k < 6; ++k) v[k] = static_cast<uint32_t>(std::strtoul(a[k].c_str(), nullptr, 16));
  philox4x32_10(v, v[4], v[5]);
  std::printf("%08" PRIx32 ",%08" PRIx32 ",%08" PRIx32 ",%08" PRIx32 "\n", v[0], v[1], v[2], v[3]);
  return 0;
}

std::vector<float> float_list(const std::string& s) {  // "0.5,-1.25,2" -> float32 values (as np.float32)
  std::vector<float> v;
  size_t at = 0;
  while (at <= s.size()) {
    size_t comma = s.find(',', at);
    std::string item = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    v.push_back(static_cast<float>(parse_double(item, "a number")));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return v;
}

int mix_mode(const std::vector<std::string>& a) {  // K logits and K means of one row, D = 1 -> the latent
  if (a.size() != 2) throw Usage("--mix L0,L1,... M0,M1,...");
  std::vector<float> l = float_list(a[0]), m = float_list(a[1]);
  if (l.size() != m.size()) throw Usage("--mix: as many logits as means");
  float z = mix(l.data(), m.data(), 1, l.size(), 1)[0];
  uint32_t bits;
  std::memcpy(&bits, &z, 4);
  std::printf("%08" PRIx32 "\n", bits);
  return 0;
}

int math_mode(const std::vector<std::string>& a) {
  if (a.size() != 1 || (a[0] != "log" && a[0] != "exp" && a[0] != "ndtri")) throw Usage("--math log|exp|ndtri");
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    uint64_t bits = std::strtoull(line.c_str(), nullptr, 16);
    double x, y;
    std::memcpy(&x, &bits, 8);
    y = a[0] == "log" ? log64(x) : a[0] == "exp" ? exp64(x) : ndtri(x);
    std::memcpy(&bits, &y, 8);
    std::printf("%016" PRIx64 "\n", bits);
  }
  return 0;
}

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "--sha256") return sha256_mode({args.begin() + 1, args.end()});
  if (args[0] == "--noise") return noise_mode({args.begin() + 1, args.end()});
  if (args[0] == "--philox") return philox_mode({args.begin() + 1, args.end()});
  if (args[0] == "--mix") return mix_mode({args.begin() + 1, args.end()});
  if (args[0] == "--math") return math_mode({args.begin() + 1, args.end()});

  std::vector<std::string> positional;
  std::map<std::string, std::string> opt;
  const std::vector<std::string> known = {"--samples", "--seed", "--batch", "--precision", "--steps", "--copies",
                                          "--mode", "--init", "--out", "--latent-lr", "--momentum", "--noise-std",
                                          "--logits-lr", "--aesthetic-weight", "--chunk", "--candidates",
                                          "--start-noise"};
  for (size_t k = 0; k < args.size(); ++k) {
    const std::string& a = args[k];
    if (a.size() > 2 && a.compare(0, 2, "--") == 0) {
      std::string name = a, value;
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        name = a.substr(0, eq), value = a.substr(eq + 1);
      } else {
        if (k + 1 >= args.size()) throw Usage(a + " needs a value");
        value = args[++k];
      }
      if (std::find(known.begin(), known.end(), name) == known.end()) throw Usage("unknown option " + name);
      opt[name] = value;
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() < 2) throw Usage("give a bundle folder and at least one query");
  if (!opt.count("--out")) throw Usage("--out is required");
  const fs::path bundle = positional[0], out_dir = opt["--out"];
  const std::vector<std::string> queries(positional.begin() + 1, positional.end());
  const uint64_t samples = opt.count("--samples") ? parse_u64(opt["--samples"], "--samples") : 1;
  const uint64_t seed = opt.count("--seed") ? parse_u64(opt["--seed"], "--seed") : 0;
  const uint64_t batch = opt.count("--batch") ? parse_u64(opt["--batch"], "--batch") : 16;
  const std::string precision = opt.count("--precision") ? opt["--precision"] : "fp32";
  if (batch < 1) throw Usage("--batch must be at least 1");
  if (precision != "fp32" && precision != "fp16") throw Usage("--precision must be fp32 or fp16");
  if (samples > 0 && seed + (samples - 1) < seed) throw Usage("--seed + --samples - 1 must be below 2^64");

  // The runtime: GetApi(29) is null on an onnxruntime older than the headers this client was built with.
  const OrtApiBase* base = OrtGetApiBase();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::fprintf(stderr,
                 "error: the onnxruntime library loaded (version %s) is older than the API this client was "
                 "built for (ORT_API_VERSION %d, onnxruntime 1.%d); use onnxruntime >= 1.%d\n",
                 base->GetVersionString(), ORT_API_VERSION, ORT_API_VERSION, ORT_API_VERSION);
    return 2;
  }
  Ort::InitApi(api);

  json m;
  try {
    m = open_bundle(bundle);
  } catch (const json::exception& e) {
    throw BundleProblem(std::string("manifest.json: ") + e.what());
  }
  Settings cfg;
  const json& s = m.at("sampling");
  cfg.mode = opt.count("--mode") ? opt["--mode"] : s.at("mode").get<std::string>();
  cfg.init = opt.count("--init") ? opt["--init"] : s.value("init", std::string("translator"));
  for (const char* h : {"steps", "copies"}) {
    std::string flag = "--" + std::string(h);
    int64_t v = opt.count(flag) ? static_cast<int64_t>(parse_u64(opt[flag], flag)) : s.at(h).get<int64_t>();
    if (v < 0) throw Usage(std::string(h) + " must be >= 0");
    (flag == "--steps" ? cfg.steps : cfg.copies) = v;
  }
  for (const char* h :
       {"latent_lr", "momentum", "noise_std", "logits_lr", "clip_norm", "adam_eps", "aesthetic_weight"}) {
    std::string flag = "--" + std::string(h);
    std::replace(flag.begin(), flag.end(), '_', '-');
    cfg.h[h] = opt.count(flag) ? parse_double(opt[flag], flag) : s.value(h, 0.0);
  }
  // Sample mode's start: candidates (1 when absent) and start_noise (0 when absent), in the ranges of
  // tr0n_rt/settings.py's RANGES.
  const std::string max_start_noise = std::to_string(static_cast<int64_t>(kMaxStartNoise));  // "100"
  if (opt.count("--candidates")) {
    uint64_t v = 0;
    try {
      v = parse_u64(opt["--candidates"], "--candidates");
    } catch (const Usage&) {  // "-1", "2.5", "x": refused below with the range
    }
    if (v < 1 || v > static_cast<uint64_t>(kMaxCandidates))
      throw Usage("--candidates must be a whole number from 1 to " + std::to_string(kMaxCandidates) + ", got " +
                  opt["--candidates"]);
    cfg.candidates = static_cast<int64_t>(v);
  } else if (s.contains("candidates")) {
    const json& v = s.at("candidates");
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > kMaxCandidates)
      throw BundleProblem("manifest.json: sampling.candidates must be a whole number from 1 to " +
                          std::to_string(kMaxCandidates) + ", got " + v.dump());
    cfg.candidates = v.get<int64_t>();
  }
  if (opt.count("--start-noise")) {
    const double v = parse_double(opt["--start-noise"], "--start-noise");
    if (!(v >= 0.0 && v <= kMaxStartNoise))  // NaN too
      throw Usage("--start-noise must be a number from 0 to " + max_start_noise + ", got " +
                  opt["--start-noise"]);
    cfg.start_noise = v;
  } else if (s.contains("start_noise")) {
    const json& v = s.at("start_noise");
    if (!v.is_number() || !(v.get<double>() >= 0.0 && v.get<double>() <= kMaxStartNoise))
      throw BundleProblem("manifest.json: sampling.start_noise must be a number from 0 to " +
                          max_start_noise + ", got " + v.dump());
    cfg.start_noise = v.get<double>();
  }
  if (opt.count("--chunk")) {
    cfg.chunk = static_cast<int64_t>(parse_u64(opt["--chunk"], "--chunk"));
    if (cfg.chunk < 1) throw Usage("--chunk must be >= 1");
  }
  if (cfg.mode != "mixture" && cfg.mode != "sample") throw Usage("--mode must be mixture or sample, got " + cfg.mode);
  if (cfg.init != "translator" && cfg.init != "prior") throw Usage("init must be translator or prior, got " + cfg.init);

  Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "tr0n_client");
  Graphs graphs(env, bundle, m, precision);
  Tensor c = conditions(m, graphs, queries);
  const int64_t cdim = c.shape.at(1);

  struct Row {
    std::string query;
    size_t index;
    uint64_t seed;
  };
  std::vector<Row> rows;
  for (size_t i = 0; i < queries.size(); ++i)
    for (uint64_t j = 0; j < samples; ++j) rows.push_back({queries[i], i, seed + j});
  fs::create_directories(out_dir);
  std::string records;
  for (size_t start = 0; start < rows.size(); start += batch) {
    size_t end = std::min(rows.size(), start + static_cast<size_t>(batch));
    const int64_t b = static_cast<int64_t>(end - start);
    Tensor part = floats({b, cdim});
    std::vector<uint64_t> seeds;
    for (size_t r = start; r < end; ++r) {
      std::copy_n(c.f.begin() + rows[r].index * cdim, cdim, part.f.begin() + (r - start) * cdim);
      seeds.push_back(rows[r].seed);
    }
    Result res = sample(m, graphs, part, seeds, cfg);
    const auto& sh = res.images.shape;  // [b, C, H, W]
    const size_t per = static_cast<size_t>(sh.at(1) * sh.at(2) * sh.at(3));
    for (size_t r = start; r < end; ++r) {
      char name[32];
      std::snprintf(name, sizeof name, "%03zu.png", r);
      write_file(out_dir / name, png(res.images.f.data() + (r - start) * per, sh[1], sh[2], sh[3]));
      records += std::string(records.empty() ? "" : ",\n") + "    {\n      \"query\": " + json(rows[r].query).dump() +
                 ",\n      \"seed\": " + std::to_string(rows[r].seed) + ",\n      \"energy\": " +
                 energy_json(res.energy.at(r - start)) + ",\n      \"file\": \"" + name + "\"\n    }";
    }
  }
  write_file(out_dir / "client.json", "{\n  \"images\": [\n" + records + (records.empty() ? "" : "\n") + "  ]\n}\n");
  std::printf("%zu images in %s\n", rows.size(), out_dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Usage& e) {
    std::fprintf(stderr, "%serror: %s\n", kUsage, e.what());
    return 2;
  } catch (const BundleProblem& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "error: onnxruntime: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
