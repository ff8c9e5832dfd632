// Two small SVG charts, written by hand so the dashboard needs no charting library and no build
// step: a line over time (the swarm's tokens/s) and grouped bars (candidate vs production).
// Every label is set with textContent, so no data is ever parsed as markup.

const NS = "http://www.w3.org/2000/svg";

function node(tag, attrs = {}, text = null) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== null) e.textContent = text;
  return e;
}

function frame(width, height, label) {
  const svg = node("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  svg.appendChild(node("title", {}, label));
  return svg;
}

// points: [{x: seconds since epoch, y: number}]
export function lineChart(points, { width = 560, height = 160, label = "", unit = "" } = {}) {
  const svg = frame(width, height, label);
  const pad = { l: 46, r: 10, t: 10, b: 22 };
  const w = width - pad.l - pad.r, h = height - pad.t - pad.b;
  svg.appendChild(node("rect", { x: pad.l, y: pad.t, width: w, height: h, fill: "#fff",
                                 stroke: "#d8dde3" }));
  if (points.length < 2) {
    svg.appendChild(node("text", { x: pad.l + 8, y: pad.t + h / 2 }, "collecting samples…"));
    return svg;
  }
  const x0 = points[0].x, x1 = points[points.length - 1].x;
  const ymax = Math.max(1e-9, ...points.map(p => p.y));
  const sx = x => pad.l + (w * (x - x0)) / Math.max(1e-9, x1 - x0);
  const sy = y => pad.t + h - (h * y) / ymax;
  svg.appendChild(node("polyline", {
    fill: "none", stroke: "#1f6fb2", "stroke-width": 1.5,
    points: points.map(p => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ") }));
  svg.appendChild(node("text", { x: 2, y: pad.t + 10 }, `${ymax.toFixed(1)} ${unit}`));
  svg.appendChild(node("text", { x: 2, y: pad.t + h }, `0 ${unit}`));
  const span = Math.round(x1 - x0);
  svg.appendChild(node("text", { x: pad.l, y: height - 6 }, `−${span} s`));
  svg.appendChild(node("text", { x: width - pad.r - 24, y: height - 6 }, "now"));
  return svg;
}

// groups: [{label, values: [{name, value}]}]; series colours by position
export function barChart(groups, { width = 560, label = "", colours = ["#8a96a3", "#1f6fb2"] } = {}) {
  const rowH = 18, gap = 10, labelW = 170, valueW = 60;
  const bars = groups.reduce((n, g) => n + g.values.length, 0);
  const height = bars * rowH + groups.length * gap + 10;
  const svg = frame(width, height, label);
  const all = groups.flatMap(g => g.values.map(v => Math.abs(v.value ?? 0)));
  const vmax = Math.max(1e-9, ...all);
  const w = width - labelW - valueW;
  let y = 5;
  for (const g of groups) {
    svg.appendChild(node("text", { x: 0, y: y + 12 }, g.label));
    g.values.forEach((v, i) => {
      const len = v.value == null ? 0 : (w * Math.abs(v.value)) / vmax;
      svg.appendChild(node("rect", { x: labelW, y, width: Math.max(len, 1), height: rowH - 4,
                                     fill: colours[i % colours.length] }));
      svg.appendChild(node("text", { x: labelW + len + 4, y: y + 11 },
                           `${v.name} ${v.value == null ? "—" : v.value.toFixed(3)}`));
      y += rowH;
    });
    y += gap;
  }
  return svg;
}
