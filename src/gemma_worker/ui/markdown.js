// Markdown to DOM, for untrusted text (model output, stored history).
// Every piece of text becomes a text node; no string is ever parsed as HTML. Supported:
// fenced code blocks (an unclosed fence runs to the end, as while streaming), headings,
// lists, block quotes, paragraphs; inline code, bold, italic and http(s) links.
"use strict";

(function () {
  // Inline code holds no backtick and no line break: the pattern stays linear on any text.
  const INLINE = /(`{1,3})([^`\n]+)\1(?!`)|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\(([^)\s]+)\)/;

  function el(tag, parent, text) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function safeUrl(href) {
    try {
      const url = new URL(href, document.baseURI);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  function inline(text, parent) {
    let rest = text;
    while (rest.length > 0) {
      const m = INLINE.exec(rest);
      if (!m) {
        parent.appendChild(document.createTextNode(rest));
        return;
      }
      if (m.index > 0) parent.appendChild(document.createTextNode(rest.slice(0, m.index)));
      if (m[1] !== undefined) {
        el("code", parent, m[2]);
      } else if (m[3] !== undefined || m[4] !== undefined) {
        inline(m[3] !== undefined ? m[3] : m[4], el("strong", parent));
      } else if (m[5] !== undefined || m[6] !== undefined) {
        inline(m[5] !== undefined ? m[5] : m[6], el("em", parent));
      } else {
        const href = safeUrl(m[8]);
        if (href === null) {
          parent.appendChild(document.createTextNode(m[0]));
        } else {
          const a = el("a", parent);
          a.href = href;
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          inline(m[7], a);
        }
      }
      rest = rest.slice(m.index + m[0].length);
    }
  }

  function lines(parent, chunk) {
    chunk.forEach((line, i) => {
      if (i > 0) el("br", parent);
      inline(line, parent);
    });
  }

  function render(text, container) {
    container.replaceChildren();
    const src = text.replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < src.length) {
      const line = src[i];
      const fence = /^\s*(```+|~~~+)\s*([\w+#.-]*)/.exec(line);
      if (fence) {
        const body = [];
        i += 1;
        while (i < src.length && !src[i].trim().startsWith(fence[1])) body.push(src[i++]);
        i += 1;
        const pre = el("pre", container);
        const code = el("code", pre, body.join("\n"));
        if (fence[2]) code.dataset.lang = fence[2];
        continue;
      }
      if (line.trim() === "") {
        i += 1;
        continue;
      }
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      if (heading) {
        inline(heading[2], el("h" + Math.min(6, heading[1].length + 2), container));
        i += 1;
        continue;
      }
      const item = /^\s*([-*+]|\d+[.)])\s+/;
      if (item.test(line)) {
        const ordered = /\d/.test(item.exec(line)[1]);
        const list = el(ordered ? "ol" : "ul", container);
        while (i < src.length && item.test(src[i])) {
          inline(src[i].replace(item, ""), el("li", list));
          i += 1;
        }
        continue;
      }
      if (/^\s*>/.test(line)) {
        const quote = [];
        while (i < src.length && /^\s*>/.test(src[i])) quote.push(src[i++].replace(/^\s*>\s?/, ""));
        lines(el("blockquote", container), quote);
        continue;
      }
      const para = [src[i++]];  // the first line always, so the loop always advances
      while (
        i < src.length && src[i].trim() !== "" && !/^\s*(```|~~~|#{1,6}\s|>)/.test(src[i]) &&
        !item.test(src[i])
      ) {
        para.push(src[i++]);
      }
      lines(el("p", container), para);
    }
  }

  window.GemmaMarkdown = { render };
})();
