#include "regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "agate/util/error.h"

namespace agate::bpe {

namespace {

std::string pcre2_error(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

// Match data, match context and JIT stack of the calling thread, shared by every pattern.
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    // Long runs of whitespace make the JIT backtrack deeply: let its stack grow to 64 MB.
    stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr);
    if (!data || !context || !stack) throw_runtime("out of memory for PCRE2 match data");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

}  // namespace

std::string pcre2_pattern(const std::string& p, const std::string& where) {
  static const char* kWord = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
  static const char* kHex = "0-9a-fA-F";
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      auto refuse = [&] {
        throw_input(where, std::string("regex escape \\") + e + " inside a character class is not supported",
                    "only tokenizer.json files of the GPT-2, Llama 3 and Qwen2 families are checked");
      };
      switch (e) {
        case 's': out += "\\p{White_Space}"; break;
        case 'S': out += "\\P{White_Space}"; break;
        case 'w': out += in_class ? std::string(kWord) : "[" + std::string(kWord) + "]"; break;
        case 'W': if (in_class) refuse(); out += "[^" + std::string(kWord) + "]"; break;
        case 'h': out += in_class ? std::string(kHex) : "[" + std::string(kHex) + "]"; break;
        case 'H': if (in_class) refuse(); out += "[^" + std::string(kHex) + "]"; break;
        default: out += '\\'; out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const size_t end = p.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(p, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, bool literal, const std::string& where) {
  const std::string p = literal ? pattern : pcre2_pattern(pattern, where);
  int err = 0;
  PCRE2_SIZE offset = 0;
  const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);  // LITERAL excludes UCP
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), options, &err, &offset, nullptr);
  if (!code) {
    throw_input(where, "regex /" + pattern + "/ does not compile: " + pcre2_error(err) + " at offset " + std::to_string(offset),
                "the pattern must be valid for Oniguruma and PCRE2");
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  MatchState& st = match_state();
  auto* code = static_cast<pcre2_code*>(code_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  const size_t n = s.size();
  size_t from = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (from <= n) {
    const int rc = jit_ ? pcre2_jit_match(code, subject, n, from, PCRE2_NO_UTF_CHECK, st.data, st.context)
                        : pcre2_match(code, subject, n, from, PCRE2_NO_UTF_CHECK, st.data, st.context);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) throw_runtime("regex matching failed: " + pcre2_error(rc), "report the text that triggers it");
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const size_t a = ov[0], b = ov[1];
    if (a == b && have_last && last_end == b) {
      // Oniguruma's iterator: no empty match right after the previous one; step one character.
      from += from < n ? (static_cast<unsigned char>(s[from]) < 0x80 ? 1
                          : static_cast<unsigned char>(s[from]) < 0xE0 ? 2
                          : static_cast<unsigned char>(s[from]) < 0xF0 ? 3 : 4)
                       : 1;
      continue;
    }
    out.emplace_back(a, b);
    from = b;
    have_last = true;
    last_end = b;
  }
}

}  // namespace agate::bpe
