// The Inpaint range on the source's waveform. gradio runs this once per component with `element`,
// `props` (props.value: {duration, peaks, start, end} or null) and `trigger`.
(() => {
  const EDGE_PX = 8;      // how near an edge a press grabs it
  const MIN_SPAN_S = 0.1;  // a click without a drag moves nothing
  let view = null;         // [first, last] second shown; null = the whole track
  let drag = null;         // {edge: "start" | "end", anchor: seconds} while a button is down

  const canvas = () => element.querySelector(".wave-canvas");
  const wave = () => (props.value && props.value.peaks ? props.value : null);
  const shown = () => {
    const data = wave();
    return view || [0, data ? data.duration : 1];
  };
  const seconds = (event) => {
    const box = canvas().getBoundingClientRect();
    const [first, last] = shown();
    const x = Math.min(Math.max(event.clientX - box.left, 0), box.width);
    return first + (last - first) * x / box.width;
  };
  const pixel = (time) => {
    const [first, last] = shown();
    return (time - first) / (last - first) * canvas().clientWidth;
  };
  const style = getComputedStyle(element);
  const say = (readout, text) => {  // unchanged text is not written: the observer below would loop
    if (readout && readout.textContent !== text) readout.textContent = text;
  };
  const colour = (name, fallback) => style.getPropertyValue(name).trim() || fallback;

  function draw() {
    const target = canvas();
    if (!target) return;
    const ratio = window.devicePixelRatio || 1;
    const width = target.clientWidth, height = target.clientHeight;
    target.width = Math.round(width * ratio);
    target.height = Math.round(height * ratio);
    const paint = target.getContext("2d");
    paint.setTransform(ratio, 0, 0, ratio, 0, 0);
    paint.clearRect(0, 0, width, height);
    const data = wave();
    const readout = element.querySelector(".wave-readout");
    if (!data) {
      say(readout, "Upload a source to see its waveform here");
      return;
    }
    if (data.readonly) return drawExtension(paint, data, width, height, readout);
    const [first, last] = shown();
    const accent = colour("--color-accent", "#6366f1");
    const left = pixel(Math.min(data.start, data.end)), right = pixel(Math.max(data.start, data.end));
    drawPeaks(paint, data, first, last, 0, width, height);
    paint.fillStyle = accent;  // the other marked ranges: a lighter tint, not dragged here
    for (const [start, end] of data.others || []) {
      paint.globalAlpha = 0.18;
      paint.fillRect(pixel(start), 0, pixel(end) - pixel(start), height);
      paint.globalAlpha = 0.6;
      paint.fillRect(pixel(start), 0, 1, height);
      paint.fillRect(pixel(end) - 1, 0, 1, height);
    }
    paint.globalAlpha = 1;
    paint.fillStyle = accent;  // the range over the peaks, tinted, between its two edges
    paint.globalAlpha = 0.35;
    paint.fillRect(left, 0, right - left, height);
    paint.globalAlpha = 1;
    paint.fillRect(left - 1, 0, 2, height);
    paint.fillRect(right - 1, 0, 2, height);
    const more = (data.others || []).length;
    say(readout, `${data.start.toFixed(2)} s – ${data.end.toFixed(2)} s` +
        (more ? ` and ${more} more range${more > 1 ? "s" : ""}` : "") +
        (view ? ` (showing ${first.toFixed(1)}–${last.toFixed(1)} s)` : ""));
  }

  // The peaks of the seconds first..last, drawn over the pixels x0..x0 + pixels.
  function drawPeaks(paint, data, first, last, x0, pixels, height) {
    paint.fillStyle = colour("--body-text-color-subdued", "#888");
    const count = data.peaks.length;
    for (let x = 0; x < pixels; x++) {
      const from = Math.floor((first + (last - first) * x / pixels) / data.duration * count);
      const to = Math.max(from + 1, Math.floor((first + (last - first) * (x + 1) / pixels) / data.duration * count));
      let level = 0;
      for (let i = Math.max(0, from); i < Math.min(count, to); i++) level = Math.max(level, data.peaks[i]);
      const bar = Math.max(1, level * (height - 4));
      paint.fillRect(x0 + x, (height - bar) / 2, 1, bar);
    }
  }

  // Outpaint: the whole source, kept as it is, between the new seconds before and after it.
  function drawExtension(paint, data, width, height, readout) {
    const before = data.before || 0, after = data.after || 0;
    const total = before + data.duration + after;
    const x = (time) => (time + before) / total * width;
    drawPeaks(paint, data, 0, data.duration, x(0), x(data.duration) - x(0), height);
    paint.fillStyle = colour("--color-accent", "#6366f1");
    paint.globalAlpha = 0.35;
    if (before) paint.fillRect(0, 0, x(0), height);
    if (after) paint.fillRect(x(data.duration), 0, width - x(data.duration), height);
    paint.globalAlpha = 1;
    paint.fillRect(x(0) - 1, 0, 2, height);
    paint.fillRect(x(data.duration) - 1, 0, 2, height);
    say(readout, `kept: the whole ${data.duration.toFixed(2)} s source` +
        (before ? `; new: ${before.toFixed(2)} s before` : "") +
        (after ? `${before ? "," : "; new:"} ${after.toFixed(2)} s after` : "") +
        ` → ${total.toFixed(2)} s`);
  }

  function set(start, end) {
    props.value = {...props.value, start: Math.round(start * 1000) / 1000,
                   end: Math.round(end * 1000) / 1000};
    draw();
  }

  function zoom(factor, centre) {
    const data = wave();
    if (!data || data.readonly) return;
    const [first, last] = shown();
    const middle = centre ?? (first + last) / 2;
    const span = Math.min(data.duration, Math.max(0.5, (last - first) * factor));
    const start = Math.min(Math.max(middle - span / 2, 0), data.duration - span);
    view = span >= data.duration ? null : [start, start + span];
    draw();
  }

  element.addEventListener("pointerdown", (event) => {
    const data = wave();
    if (!data || data.readonly || event.target !== canvas()) return;
    const time = seconds(event);
    const near = (edge) => Math.abs(pixel(data[edge]) - pixel(time)) <= EDGE_PX;
    if (near("start")) drag = {edge: "start", anchor: data.end};
    else if (near("end")) drag = {edge: "end", anchor: data.start};
    else drag = {edge: "end", anchor: time, fresh: true, from: time};
    canvas().setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  element.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const time = seconds(event);
    if (drag.fresh && Math.abs(time - drag.from) < MIN_SPAN_S) return;
    set(Math.min(drag.anchor, time), Math.max(drag.anchor, time));
    drag.moved = true;
  });
  const finish = () => {
    const moved = drag && drag.moved;
    drag = null;
    if (moved) trigger("release");  // the form's fields follow
  };
  element.addEventListener("pointerup", finish);
  element.addEventListener("pointercancel", finish);
  element.addEventListener("wheel", (event) => {
    if (!wave() || !event.ctrlKey) return;  // plain wheel scrolls the page
    event.preventDefault();
    zoom(event.deltaY < 0 ? 0.5 : 2, seconds(event));
  }, {passive: false});
  element.addEventListener("click", (event) => {
    if (event.target.closest(".wave-zoom-in")) zoom(0.5);
    else if (event.target.closest(".wave-zoom-out")) zoom(2);
    else if (event.target.closest(".wave-fit")) { view = null; draw(); }
  });
  new MutationObserver(() => draw()).observe(element, {childList: true, subtree: true});
  new ResizeObserver(() => draw()).observe(element);
  let last = null;
  setInterval(() => {  // a value set by the server (a new source, typed fields) redraws
    const now = JSON.stringify(props.value && [props.value.start, props.value.end, props.value.duration,
                                               props.value.others, props.value.before, props.value.after]);
    if (now !== last) { last = now; if (!props.value || !props.value.peaks) view = null; draw(); }
  }, 200);
  draw();
})();
