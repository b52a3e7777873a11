// nuop console: the live tail of reconciles and script log lines.
//
// Reads /events (Server-Sent Events). When the connection drops, the browser
// reconnects on its own and sends Last-Event-ID; the server then replays what was
// missed from its rings first, so the list has no gaps while the rings still hold
// them. Builds elements with textContent only: nothing from the cluster is parsed as
// HTML. Shipped inside the binary (no CDN); the pages work without it.
(function () {
  'use strict';
  var tail = document.getElementById('tail');
  if (!tail || !window.EventSource) {
    return;
  }
  var list = document.getElementById('tail-list');
  var status = document.getElementById('tail-status');
  var controller = tail.getAttribute('data-controller') || '';
  var after = tail.getAttribute('data-after') || '0';
  var MAX_ITEMS = 200;

  function setStatus(text) {
    status.textContent = text;
    tail.setAttribute('data-state', text);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function formatTime(ms) {
    return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
  }

  // The same phrases as Trigger::describe on the server.
  function describe(t) {
    switch (t.type) {
      case 'own_event': return 'own event';
      case 'child': return 'child ' + t.kind + ' ' + t.object;
      case 'related': return t.object ? 'related ' + t.kind + ' ' + t.object : 'related ' + t.kind + ' (all primaries)';
      case 'requeue': return 'requeue';
      case 'retry': return t.failures === 1 ? 'retry (1 failure)' : 'retry (' + t.failures + ' failures)';
      default: return t.type;
    }
  }

  function objectHref(namespace, name) {
    return namespace
      ? '/objects/' + encodeURIComponent(namespace) + '/' + encodeURIComponent(name)
      : '/objects/' + encodeURIComponent(name);
  }

  function item(r) {
    var li = el('li', 'rec new outcome-' + r.outcome);
    li.setAttribute('data-id', String(r.id));
    var line = el('div', 'line');
    line.appendChild(el('time', '', formatTime(r.started_ms)));
    line.appendChild(document.createTextNode(' '));
    line.appendChild(el('span', 'ctl', r.controller));
    line.appendChild(document.createTextNode(' '));
    var link = el('a', '', r.namespace ? r.namespace + '/' + r.name : r.name);
    link.href = objectHref(r.namespace, r.name);
    line.appendChild(link);
    line.appendChild(document.createTextNode(' '));
    line.appendChild(el('span', 'trigger', describe(r.trigger)));
    line.appendChild(document.createTextNode(' '));
    line.appendChild(el('span', 'outcome', r.outcome));
    line.appendChild(document.createTextNode(' '));
    line.appendChild(el('span', 'dur', r.duration_ms.toFixed(1) + ' ms'));
    li.appendChild(line);
    if (r.error) {
      li.appendChild(el('pre', 'error', (r.category || 'error') + ': ' + r.error));
    }
    if (r.lines && r.lines.length) {
      li.appendChild(el('pre', 'lines', r.lines.join('\n')));
    }
    return li;
  }

  var url = '/events?after=' + encodeURIComponent(after);
  if (controller) {
    url += '&controller=' + encodeURIComponent(controller);
  }
  var source = new EventSource(url);
  source.onopen = function () { setStatus('live'); };
  source.onerror = function () { setStatus('reconnecting'); };
  source.addEventListener('reconcile', function (event) {
    var r = JSON.parse(event.data);
    if (list.querySelector('li[data-id="' + r.id + '"]')) {
      return;
    }
    var empty = list.querySelector('li.empty');
    if (empty) { list.removeChild(empty); }
    list.insertBefore(item(r), list.firstChild);
    while (list.children.length > MAX_ITEMS) {
      list.removeChild(list.lastChild);
    }
  });
})();
