// Adds the session's CSRF token to same-origin POSTs made with fetch (Dash callbacks) as the
// X-CSRFToken header. The token comes from the kpi_csrf cookie the server sets after login;
// the server compares it with the one in the signed session (docs/security.md).
(function () {
  "use strict";
  function token() {
    var m = document.cookie.match(/(?:^|;\s*)kpi_csrf=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  var originalFetch = window.fetch;
  window.fetch = function (input, init) {
    init = init || {};
    var isRequest = typeof Request !== "undefined" && input instanceof Request;
    var method = (init.method || (isRequest ? input.method : "GET")).toUpperCase();
    var url = new URL(isRequest ? input.url : String(input), window.location.href);
    if (method !== "GET" && method !== "HEAD" && url.origin === window.location.origin) {
      var headers = new Headers(init.headers || (isRequest ? input.headers : undefined));
      headers.set("X-CSRFToken", token());
      init = Object.assign({}, init, {headers: headers});
    }
    return originalFetch.call(this, input, init);
  };
})();
