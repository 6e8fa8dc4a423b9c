// The studio: every take of this browser (or --auth user), grouped by the run that made them,
// side by side; and an A/B player. gradio runs this once with `element`, `props` (props.value:
// {takes: [take summary, ...]}) and `trigger`. An action on a take (replay, send, recipe,
// delete) sets props.value.action and triggers "select"; the server answers with the new list.
(() => {
  const FADE_S = 0.01;  // the A/B switch: a 10 ms crossfade, no gap, no click
  const ab = {a: null, b: null, side: "a", ctx: null, buffers: {}, gains: {}, match: {a: 1, b: 1},
              levels: {a: -Infinity, b: -Infinity},
              sources: [], playing: false, offset: 0, startedAt: 0, loading: 0};

  const root = () => element.querySelector(".studio");
  const takes = () => (props.value && props.value.takes) || [];
  const byId = (id) => takes().find((take) => take.id === id) || null;
  const make = (tag, attributes = {}, text = "") => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text) node.textContent = text;  // text, never markup: tags and lyrics are the user's
    return node;
  };
  const clock = (epoch) => new Date(epoch * 1000).toLocaleString([], {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"});
  const label = (take) => `${take.task} · seed ${take.seed}`;
  const send = (kind, take, target = "") => {
    props.value = {...props.value, action: {kind, id: take.id, target, nonce: Date.now()}};
    trigger("select");
  };

  function card(take) {
    const node = make("div", {class: "take-card", "data-id": take.id, "data-seed": take.seed});
    const head = make("div", {class: "take-head"});
    head.append(make("b", {}, `seed ${take.seed}`),
                make("span", {}, ` · ${take.task} · ${take.model_label || take.model}`));
    node.append(head, make("div", {class: "take-tags", title: take.lyrics || ""},
                           take.tags || "(no tags)"));
    if (take.parent) {
      const parent = byId(take.parent);
      node.append(parent
        ? make("button", {type: "button", class: "take-parent", "data-act": "show-parent",
                          title: "Show the take this one was made from"},
               `from ${label(parent)}, ${clock(parent.created)}`)
        : make("div", {class: "take-parent"}, "from an earlier take (deleted)"));
    }
    const player = make("audio", {controls: "", preload: "none", src: take.url});
    node.append(player, make("div", {class: "take-time"},
                             `${clock(take.created)} · ${(take.duration_s || 0).toFixed(1)} s`));
    const actions = make("div", {class: "take-actions"});
    const button = (text, what, title) => {
      const item = make("button", {type: "button", "data-act": what, title}, text);
      actions.append(item);
      return item;
    };
    button("Replay", "replay", "Fill this take's tab with its settings and seed");
    for (const target of ["inpaint", "outpaint", "edit"]) {
      button(`→ ${target[0].toUpperCase()}${target.slice(1)}`, `send-${target}`,
             `Use this take as the source of ${target}`);
    }
    const download = make("a", {href: take.url, download: take.file, class: "take-download"},
                          "Download");
    actions.append(download);
    button("Recipe", "recipe", "The chain of steps that made this take, as a replayable JSON");
    button("Delete", "delete", "Delete this take");
    button("A", "ab-a", "Compare this take as A");
    button("B", "ab-b", "Compare this take as B");
    node.append(actions);
    return node;
  }

  function drawList() {
    const list = element.querySelector(".takes-list");
    if (!list) return;
    const key = JSON.stringify(takes().map((take) => take.id)) + `|${ab.a}|${ab.b}`;
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    list.replaceChildren();
    if (!takes().length) {
      list.append(make("div", {class: "takes-empty"},
                       "Your takes appear here, kept across reloads: run a tab to make one."));
      return;
    }
    const runs = [];
    for (const take of takes()) {  // newest first; a run's takes stay together
      const last = runs[runs.length - 1];
      if (last && last.id === take.run_id) last.takes.push(take);
      else runs.push({id: take.run_id, takes: [take]});
    }
    for (const run of runs) {
      run.takes.sort((one, two) => one.index - two.index);
      const group = make("div", {class: "take-run", "data-run": run.id});
      const first = run.takes[0];
      group.append(make("div", {class: "run-head"},
                        `${first.task} · ${run.takes.length} take${run.takes.length > 1 ? "s" : ""}`
                        + ` · ${clock(first.created)}`));
      const row = make("div", {class: "take-row"});
      for (const take of run.takes) {
        const node = card(take);
        if (take.id === ab.a) node.classList.add("is-a");
        if (take.id === ab.b) node.classList.add("is-b");
        row.append(node);
      }
      group.append(row);
      list.append(group);
    }
  }

  // The A/B player: both takes play together from one clock, only one heard; switching moves the
  // gain, so the playhead is the same and there is no gap. Each is scaled to the quieter one's
  // integrated loudness (ITU-R BS.1770: K-weighted, gated; never boosted, so never clipped).
  const biquad = (kind, rate) => {  // the K-weighting stages, designed for the buffer's rate
    const [gainDb, q, hz] = kind === "shelf" ? [4, Math.SQRT1_2, 1500] : [0, 0.5, 38];
    const a = Math.pow(10, gainDb / 40), w = 2 * Math.PI * hz / rate;
    const cos = Math.cos(w), alpha = Math.sin(w) / (2 * q), root = 2 * Math.sqrt(a) * alpha;
    const [b, d] = kind === "shelf"
      ? [[a * ((a + 1) + (a - 1) * cos + root), -2 * a * ((a - 1) + (a + 1) * cos),
          a * ((a + 1) + (a - 1) * cos - root)],
         [(a + 1) - (a - 1) * cos + root, 2 * ((a - 1) - (a + 1) * cos),
          (a + 1) - (a - 1) * cos - root]]
      : [[(1 + cos) / 2, -(1 + cos), (1 + cos) / 2], [1 + alpha, -2 * cos, 1 - alpha]];
    return {b: b.map((x) => x / d[0]), a: [1, d[1] / d[0], d[2] / d[0]]};
  };
  const filtered = (data, {b, a}) => {
    const out = new Float64Array(data.length);
    let x1 = 0, x2 = 0, y1 = 0, y2 = 0;
    for (let i = 0; i < data.length; i++) {
      const y = b[0] * data[i] + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2;
      x2 = x1; x1 = data[i]; y2 = y1; y1 = y; out[i] = y;
    }
    return out;
  };
  const loudness = (buffer) => {  // LUFS; -Infinity for silence or a take under 400 ms
    const rate = buffer.sampleRate, block = Math.round(0.4 * rate), hop = Math.round(0.1 * rate);
    const stages = [biquad("shelf", rate), biquad("pass", rate)];
    const blocks = Math.floor((buffer.length - block) / hop) + 1;
    if (buffer.length < block || blocks < 1) return -Infinity;
    const power = new Float64Array(blocks);  // per block, summed over the channels (weights 1)
    for (let channel = 0; channel < buffer.numberOfChannels; channel++) {
      const weighted = filtered(filtered(buffer.getChannelData(channel), stages[0]), stages[1]);
      const sums = new Float64Array(weighted.length + 1);
      for (let i = 0; i < weighted.length; i++) sums[i + 1] = sums[i] + weighted[i] * weighted[i];
      for (let j = 0; j < blocks; j++) power[j] += (sums[j * hop + block] - sums[j * hop]) / block;
    }
    const lufs = (z) => -0.691 + 10 * Math.log10(z);
    const mean = (values) => values.reduce((sum, z) => sum + z, 0) / values.length;
    const heard = Array.from(power).filter((z) => lufs(z) > -70);  // the absolute gate
    if (!heard.length) return -Infinity;
    const relative = lufs(mean(heard)) - 10;
    const kept = heard.filter((z) => lufs(z) > relative);
    return lufs(mean(kept));
  };
  const position = () => (ab.playing && ab.ctx
                          ? ab.offset + ab.ctx.currentTime - ab.startedAt : ab.offset);
  const longest = () => Math.max(0, ...["a", "b"].map((s) => (ab.buffers[s] || {}).duration || 0));

  async function choose(side, take) {
    stop();
    ab[side] = take.id;
    ab.buffers[side] = null;
    ab.loading += 1;
    status();
    try {
      // at the take's own rate: decoding resamples nothing, so the loudness is the file's
      ab.ctx = ab.ctx || new AudioContext(take.sample_rate ? {sampleRate: take.sample_rate} : {});
      const response = await fetch(take.url);
      const buffer = await ab.ctx.decodeAudioData(await response.arrayBuffer());
      if (ab[side] === take.id) ab.buffers[side] = buffer;
    } catch (error) {
      ab[side] = null;
      console.error("A/B: cannot load the take", error);
    } finally {
      ab.loading -= 1;
    }
    if (ab.buffers.a && ab.buffers.b) {
      const levels = {a: loudness(ab.buffers.a), b: loudness(ab.buffers.b)};
      const quiet = Math.min(levels.a, levels.b);
      ab.levels = levels;
      ab.match = Number.isFinite(quiet)  // a silent take: nothing to match
        ? {a: Math.pow(10, (quiet - levels.a) / 20), b: Math.pow(10, (quiet - levels.b) / 20)}
        : {a: 1, b: 1};
    }
    ab.offset = 0;
    drawList();
    status();
  }

  function play() {
    if (!ab.buffers.a || !ab.buffers.b || ab.playing) return;
    ab.ctx.resume();
    if (ab.offset >= longest()) ab.offset = 0;
    const at = ab.ctx.currentTime + 0.02;
    ab.sources = [];
    for (const side of ["a", "b"]) {
      const source = ab.ctx.createBufferSource();
      source.buffer = ab.buffers[side];
      const gain = ab.ctx.createGain();
      gain.gain.value = side === ab.side ? ab.match[side] : 0;
      source.connect(gain).connect(ab.ctx.destination);
      if (ab.offset < source.buffer.duration) source.start(at, ab.offset);
      ab.sources.push(source);
      ab.gains[side] = gain;
    }
    ab.startedAt = at;
    ab.playing = true;
    status();
  }

  function stop() {
    if (!ab.playing) return;
    ab.offset = Math.max(0, position());
    for (const source of ab.sources) { try { source.stop(); } catch (error) { /* not started */ } }
    ab.sources = [];
    ab.playing = false;
    status();
  }

  function pick(side) {
    ab.side = side;
    if (ab.playing) {
      const now = ab.ctx.currentTime;
      for (const which of ["a", "b"]) {
        const gain = ab.gains[which].gain;
        gain.cancelScheduledValues(now);
        gain.setValueAtTime(gain.value, now);
        gain.linearRampToValueAtTime(which === side ? ab.match[which] : 0, now + FADE_S);
      }
    }
    status();
  }

  const decibels = (ratio) => `${(20 * Math.log10(ratio)).toFixed(1)} dB`;
  const minutes = (seconds) => `${Math.floor(seconds / 60)}:${(seconds % 60).toFixed(1).padStart(4, "0")}`;
  function status() {
    const bar = element.querySelector(".ab-bar");
    if (!bar) return;
    if (ab.playing && position() >= longest()) stop();
    const a = byId(ab.a), b = byId(ab.b);
    const write = (selector, text) => {
      const node = bar.querySelector(selector);
      if (node && node.textContent !== text) node.textContent = text;
    };
    write(".ab-a", `A: ${a ? label(a) : "pick a take's A"}`);
    write(".ab-b", `B: ${b ? label(b) : "pick a take's B"}`);
    write(".ab-play", ab.playing ? "Pause" : "Play");
    write(".ab-time", minutes(Math.max(0, position())));
    write(".ab-match", ab.buffers.a && ab.buffers.b
          ? `loudness-matched: A ${ab.levels.a.toFixed(1)} LUFS ${decibels(ab.match.a)}, ` +
            `B ${ab.levels.b.toFixed(1)} LUFS ${decibels(ab.match.b)}`
          : (ab.loading ? "loading…" : ""));
    for (const side of ["a", "b"]) {
      const toggle = bar.querySelector(`.ab-side-${side}`);
      if (toggle) toggle.classList.toggle("is-on", ab.side === side);
    }
    const ready = Boolean(ab.buffers.a && ab.buffers.b);
    Object.assign(root().dataset, {abReady: ready, abSide: ab.side, abPlaying: ab.playing,
                                   abPosition: position().toFixed(3), abGainA: ab.match.a.toFixed(4),
                                   abGainB: ab.match.b.toFixed(4),
                                   abLufsA: ready ? ab.levels.a.toFixed(3) : "",
                                   abLufsB: ready ? ab.levels.b.toFixed(3) : ""});
  }

  element.addEventListener("click", (event) => {
    const target = event.target.closest("button");
    if (!target) return;
    if (target.classList.contains("ab-play")) return ab.playing ? stop() : play();
    if (target.classList.contains("ab-side-a")) return pick("a");
    if (target.classList.contains("ab-side-b")) return pick("b");
    const what = target.dataset.act;
    const take = byId((target.closest(".take-card") || {dataset: {}}).dataset.id);
    if (!what || !take) return;
    if (what === "ab-a" || what === "ab-b") return choose(what.slice(3), take);
    if (what === "show-parent") {  // where it came from: scrolled to and marked for a moment
      const parent = element.querySelector(`.take-card[data-id="${take.parent}"]`);
      if (parent) {
        parent.scrollIntoView({behavior: "smooth", block: "center"});
        parent.classList.add("is-shown");
        setTimeout(() => parent.classList.remove("is-shown"), 1500);
      }
      return;
    }
    if (what.startsWith("send-")) return send("send", take, what.slice(5));
    if (what === "delete") {
      for (const side of ["a", "b"]) if (ab[side] === take.id) { stop(); ab[side] = null; }
    }
    send(what, take);
  });
  // A value set by the server (a page load, a new take, a delete) redraws; so does a render of
  // the template by gradio, which drops what was drawn.
  setInterval(() => { drawList(); status(); }, 100);
  drawList();
  status();
})();
