// Evaluation output: a markdown table, JSON, and an SVG plot of quality against keep ratio.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "agate/eval/eval.h"

namespace agate::eval {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

std::string metric_text(const Report& r, double v) { return r.higher_is_better ? fmt("%.3f", v) : fmt("%.2f", v); }

std::string interval_text(const Interval& i) {
  return "[" + fmt("%+.3f", i.lo) + ", " + fmt("%+.3f", i.hi) + "]" + (i.excludes_zero() ? "*" : "");
}

}  // namespace

std::string markdown(const Report& r) {
  const bool tokens = !r.rows.empty() && r.rows[0].token_accuracy >= 0;
  std::string out = "| policy | budget | keep | KV MB | " + r.metric_name + " | delta vs full [95% CI] |" +
                    (tokens ? " target-token acc |" : "") + " vs best training-free [95% CI] | samples/s | prefill+select vs full |\n";
  out += std::string("|---|---|---|---|---|---|") + (tokens ? "---|" : "") + "---|---|---|\n";
  for (const Row& w : r.rows) {
    const std::string delta = w.policy == "full" ? std::string("-") : fmt("%+.3f", w.delta) + " " + interval_text(w.ci_full);
    const std::string best =
        w.best_baseline.empty() ? std::string("-") : fmt("%+.3f", w.vs_best) + " " + interval_text(w.ci_best) + " vs " + w.best_baseline;
    out += "| " + w.policy + " | " + w.budget + " | " + fmt("%.3f", w.keep) + " | " + fmt("%.3f", w.kv_bytes / 1e6) + " | " +
           metric_text(r, w.metric) + " | " + delta + " | " + (tokens ? fmt("%.3f", w.token_accuracy) + " | " : "") + best + " | " +
           fmt("%.1f", w.samples_per_s) + " | " + fmt("%.2fx", w.overhead) + " |\n";
  }
  out += "\n95% CI: paired bootstrap over samples (2000 resamples); * marks an interval that excludes 0.\n";
  std::set<std::string> groups;
  for (const Row& w : r.rows)
    for (const auto& g : w.groups) groups.insert(g.first);
  if (groups.empty()) return out;
  out += "\n| policy | budget |";
  for (const auto& g : groups) out += " " + g + " |";
  out += "\n|---|---|";
  for (size_t i = 0; i < groups.size(); ++i) out += "---|";
  out += "\n";
  for (const Row& w : r.rows) {
    out += "| " + w.policy + " | " + w.budget + " |";
    for (const auto& g : groups) {
      auto it = w.groups.find(g);
      out += it == w.groups.end() ? " - |"
                                  : " " + std::to_string(it->second.first) + "/" + std::to_string(it->second.second) + " |";
    }
    out += "\n";
  }
  return out;
}

std::string json_text(const Report& r) {
  nlohmann::json rows = nlohmann::json::array();
  for (const Row& w : r.rows) {
    nlohmann::json g = nlohmann::json::object();
    for (const auto& [k, v] : w.groups) g[k] = {{"correct", v.first}, {"total", v.second}};
    rows.push_back({{"policy", w.policy}, {"budget", w.budget}, {"keep", w.keep}, {"kv_bytes", w.kv_bytes},
                    {"metric", w.metric}, {"delta", w.delta}, {"samples_per_s", w.samples_per_s},
                    {"overhead", w.overhead}, {"groups", g}});
    if (w.token_accuracy >= 0) rows.back()["token_accuracy"] = w.token_accuracy;
    rows.back()["per_sample"] = {{"num", w.parts.num}, {"den", w.parts.den}, {"exp", w.parts.exp}};
    if (w.policy != "full") rows.back()["delta_ci95"] = {w.ci_full.lo, w.ci_full.hi};
    if (!w.best_baseline.empty()) {
      rows.back()["best_baseline"] = w.best_baseline;
      rows.back()["vs_best"] = w.vs_best;
      rows.back()["vs_best_ci95"] = {w.ci_best.lo, w.ci_best.hi};
    }
  }
  nlohmann::json j = {{"task", r.task}, {"metric", r.metric_name}, {"higher_is_better", r.higher_is_better},
                      {"samples", r.samples}, {"rows", rows}};
  return j.dump(2) + "\n";
}

std::string svg_plot(const Report& r) {
  const double W = 640, H = 400, left = 70, right = 170, top = 30, bottom = 50;
  double lo = INFINITY, hi = -INFINITY;
  for (const Row& w : r.rows) lo = std::min(lo, w.metric), hi = std::max(hi, w.metric);
  if (!(hi > lo)) lo -= 0.5, hi += 0.5;
  const double pad = 0.05 * (hi - lo);
  lo -= pad, hi += pad;
  auto X = [&](double keep) { return left + keep * (W - left - right); };
  auto Y = [&](double m) { return top + (hi - m) / (hi - lo) * (H - top - bottom); };
  std::map<std::string, std::vector<std::pair<double, double>>> lines;
  std::vector<std::string> order;
  for (const Row& w : r.rows) {
    if (!lines.count(w.policy)) order.push_back(w.policy);
    lines[w.policy].push_back({w.keep, w.metric});
  }
  const char* colors[] = {"#000000", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::string s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + fmt("%.0f", W) + "\" height=\"" + fmt("%.0f", H) +
                  "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"" + fmt("%.0f", left) + "\" y=\"18\">" + r.task + ": " + r.metric_name + " against keep ratio (" +
       std::to_string(r.samples) + " samples)</text>\n";
  // Axes, ticks and grid.
  for (int i = 0; i <= 5; ++i) {
    const double k = i / 5.0, m = lo + (hi - lo) * i / 5.0;
    s += "<line x1=\"" + fmt("%.1f", X(k)) + "\" y1=\"" + fmt("%.1f", top) + "\" x2=\"" + fmt("%.1f", X(k)) + "\" y2=\"" +
         fmt("%.1f", H - bottom) + "\" stroke=\"#eee\"/>\n";
    s += "<text x=\"" + fmt("%.1f", X(k) - 10) + "\" y=\"" + fmt("%.1f", H - bottom + 18) + "\">" + fmt("%.1f", k) + "</text>\n";
    s += "<line x1=\"" + fmt("%.1f", left) + "\" y1=\"" + fmt("%.1f", Y(m)) + "\" x2=\"" + fmt("%.1f", W - right) + "\" y2=\"" +
         fmt("%.1f", Y(m)) + "\" stroke=\"#eee\"/>\n";
    s += "<text x=\"8\" y=\"" + fmt("%.1f", Y(m) + 4) + "\">" + metric_text(r, m) + "</text>\n";
  }
  s += "<rect x=\"" + fmt("%.0f", left) + "\" y=\"" + fmt("%.0f", top) + "\" width=\"" + fmt("%.0f", W - left - right) +
       "\" height=\"" + fmt("%.0f", H - top - bottom) + "\" fill=\"none\" stroke=\"black\"/>\n";
  s += "<text x=\"" + fmt("%.0f", (W - right + left) / 2 - 60) + "\" y=\"" + fmt("%.0f", H - 12) +
       "\">keep ratio (stored / full KV entries)</text>\n";
  for (size_t i = 0; i < order.size(); ++i) {
    auto pts = lines[order[i]];
    std::sort(pts.begin(), pts.end());
    const std::string c = colors[i % 9];
    std::string poly;
    for (const auto& [k, m] : pts) {
      poly += fmt("%.1f", X(k)) + "," + fmt("%.1f", Y(m)) + " ";
      s += "<circle cx=\"" + fmt("%.1f", X(k)) + "\" cy=\"" + fmt("%.1f", Y(m)) + "\" r=\"3.5\" fill=\"" + c + "\"/>\n";
    }
    if (pts.size() > 1) s += "<polyline points=\"" + poly + "\" fill=\"none\" stroke=\"" + c + "\" stroke-width=\"1.5\"/>\n";
    const double ly = top + 10 + 18.0 * static_cast<double>(i);
    s += "<line x1=\"" + fmt("%.0f", W - right + 12) + "\" y1=\"" + fmt("%.1f", ly) + "\" x2=\"" + fmt("%.0f", W - right + 32) +
         "\" y2=\"" + fmt("%.1f", ly) + "\" stroke=\"" + c + "\" stroke-width=\"3\"/>\n";
    s += "<text x=\"" + fmt("%.0f", W - right + 38) + "\" y=\"" + fmt("%.1f", ly + 4) + "\">" + order[i] + "</text>\n";
  }
  return s + "</svg>\n";
}

}  // namespace agate::eval
