(() => {
  "use strict";
  const FILTERS = ["all", "ok", "failed"];
  const cards = Array.from(document.querySelectorAll("article.card"));
  const texts = cards.map((card) => {
    const prompt = card.querySelector(".prompt");
    const revised = card.querySelector(".revised p");
    return [card.dataset.id, prompt && prompt.textContent, revised && revised.textContent]
      .join("\n").toLowerCase();
  });
  const buttons = Array.from(document.querySelectorAll("button[data-filter]"));
  const search = document.getElementById("search");
  const shown = document.getElementById("shown");
  const empty = document.getElementById("empty");
  let filter = "all";

  const fromHash = () => {
    const name = decodeURIComponent(location.hash.slice(1)).toLowerCase();
    return FILTERS.includes(name) ? name : "all";
  };
  const apply = () => {
    const query = search.value.trim().toLowerCase();
    let visible = 0;
    cards.forEach((card, i) => {
      const ok = card.dataset.status === "ok";
      const pass = filter === "all" || (filter === "ok" ? ok : !ok);
      card.hidden = !(pass && (!query || texts[i].includes(query)));
      if (!card.hidden) visible += 1;
    });
    buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.filter === filter)));
    shown.textContent = visible.toLocaleString() + " of " + cards.length.toLocaleString();
    empty.hidden = visible > 0;
    document.documentElement.dataset.filter = filter;
  };
  const setFilter = (name, updateHash) => {
    filter = name;
    if (updateHash && location.hash !== "#" + name) {
      try { history.replaceState(null, "", "#" + name); } catch (e) { location.hash = name; }
    }
    apply();
  };

  buttons.forEach((b) => b.addEventListener("click", () => setFilter(b.dataset.filter, true)));
  search.addEventListener("input", apply);
  window.addEventListener("hashchange", () => setFilter(fromHash(), false));
  document.addEventListener("click", (event) => {
    const prompt = event.target.closest && event.target.closest(".prompt:not(.none)");
    if (prompt) prompt.classList.toggle("expanded");
  });
  const mark = (img) => img.classList.add(img.naturalWidth > 0 ? "loaded" : "broken");
  document.addEventListener("load", (e) => {
    if (e.target.tagName === "IMG") mark(e.target);
  }, true);
  document.addEventListener("error", (e) => {
    if (e.target.tagName === "IMG") e.target.classList.add("broken");
  }, true);
  document.querySelectorAll("img").forEach((img) => { if (img.complete) mark(img); });

  const query = new URLSearchParams(location.search).get("q");
  if (query) search.value = query;
  setFilter(fromHash(), false);
})();
