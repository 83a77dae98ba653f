// Allotment's meter: a status bar item with this session's cost so far and per hour and what
// its account has left; it turns red and says why before a runtime or budget limit stops the
// session. Numbers come from the session's own server (GET <base>/allotment/meter), which asks
// Allotment with the session's token; between answers the cost moves with the clock.
import { IStatusBar } from "@jupyterlab/statusbar";
import { ServerConnection } from "@jupyterlab/services";
import { Widget } from "@lumino/widgets";

const REFRESH_MS = 30000;
const TICK_MS = 2000;

function money(x, currency) {
  return x.toFixed(2) + " " + currency;
}

// The Dask clusters this session owns, in one phrase: "+ 8 Dask workers: 1.20 credits/h"
// (their schedulers' cost included); "" when it owns none.
function daskLine(clusters, currency) {
  if (!clusters || clusters.length === 0) return "";
  let workers = 0;
  let perHour = 0;
  for (const c of clusters) {
    workers += c.workers;
    perHour += c.cost_per_hour;
  }
  const noun = workers === 1 ? " Dask worker: " : " Dask workers: ";
  return "+ " + workers + noun + money(perHour, currency) + "/h";
}

class Meter extends Widget {
  constructor() {
    super();
    this.addClass("allotment-meter");
    this.node.style.padding = "0 6px";
    this.node.textContent = "Allotment: …";
    this.node.title = "What this session costs (Allotment)";
    this.data = null;
    this.at = 0;
  }

  async refresh() {
    const settings = ServerConnection.makeSettings();
    try {
      const r = await ServerConnection.makeRequest(settings.baseUrl + "allotment/meter", {}, settings);
      if (!r.ok) throw new Error(String(r.status));
      this.data = await r.json();
      this.at = Date.now();
    } catch (e) {
      this.node.textContent = "Allotment: meter unavailable";
      return;
    }
    this.render();
  }

  render() {
    const d = this.data;
    if (!d) return;
    const running = !d.ended_at && d.started_at;
    const hours = running ? (Date.now() - this.at) / 3600000 : 0;
    const cost = d.cost + d.cost_per_hour * hours;
    let text = money(cost, d.currency) + " so far · " + money(d.cost_per_hour, d.currency) + "/h";
    if (d.budget) {
      const left = d.budget.left - d.cost_per_hour * hours;
      text += " · " + money(left, d.currency) + " left in " + d.budget.account;
    }
    const dask = daskLine(d.clusters, d.currency);
    if (dask) text += " " + dask;
    const warn = d.warnings && d.warnings.length > 0;
    this.node.textContent = (warn ? "⚠ " : "") + text;
    this.node.style.color = warn ? "var(--jp-error-color1, #c5221f)" : "";
    this.node.title = warn ? d.warnings.join("\n") : "What this session costs (Allotment)";
    this.node.dataset.cost = cost.toFixed(6);
  }
}

const plugin = {
  id: "@allotment/meter:plugin",
  description: "This session's cost in the status bar.",
  autoStart: true,
  optional: [IStatusBar],
  activate: (app, statusBar) => {
    if (!statusBar) return;
    const meter = new Meter();
    statusBar.registerStatusItem("@allotment/meter:item", { item: meter, align: "left", rank: 1000 });
    meter.refresh();
    setInterval(() => meter.refresh(), REFRESH_MS);
    setInterval(() => meter.render(), TICK_MS);
  }
};

export default plugin;
