// Options with fixed choices: an `enum class` whose values are 0..N-1, and one table of their
// names (the strings recipes, flags and files use), so parsing, printing and the recipe
// schema's list of choices come from the same place.
//
//   enum class Pooling { Max, Avg };
//   inline constexpr Choices<Pooling, 2> kPoolings{{"max", "avg"}};
//   kPoolings.name(Pooling::Avg)            -> "avg"
//   kPoolings.parse("max", "--pooling")     -> Pooling::Max
//   kPoolings.parse("mean", "--pooling")    -> throws Usage: "--pooling 'mean' is not one of max, avg" (hint: use max or avg)
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <vector>

namespace agate {

// Throws agate::Error(Usage): "<what> '<got>' is not one of a, b, c" with the hint "use a, b or c".
[[noreturn]] void throw_bad_choice(const std::string& what, const std::string& got, const char* const* names, size_t n);

template <typename E, size_t N>
struct Choices {
  std::array<const char*, N> names;

  constexpr const char* name(E value) const { return names[static_cast<size_t>(value)]; }
  E parse(const std::string& text, const std::string& what) const {
    for (size_t i = 0; i < N; ++i)
      if (text == names[i]) return static_cast<E>(i);
    throw_bad_choice(what, text, names.data(), N);
  }
  std::vector<std::string> list() const { return {names.begin(), names.end()}; }
};

}  // namespace agate
