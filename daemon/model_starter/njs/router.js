// model-starter: route an OpenAI-style request under /v1/ to the model its body names.
//
// The generated nginx include declares `js_var $ms_v1_model` and a `map` from that name
// (every configured model and alias) to the model's named location; this file never
// changes with the config. The body must be in memory (client_body_buffer_size equals
// client_max_body_size in the /v1/ location). A JSON body is routed by its top-level
// `model` field, a multipart/form-data body (audio) by its `model` form field.
// internalRedirect to a named location keeps the method, URI, headers and body.

const MAX_NAME = 256;

function fail(r, status, message, param, code) {
    const type = status >= 500 ? 'server_error' : 'invalid_request_error';
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify(
        {error: {message: message, type: type, param: param, code: code}}));
}

function formField(body, name) {
    // The value of a multipart/form-data field, or undefined.
    const marker = 'name="' + name + '"';
    let at = body.indexOf(marker);
    while (at >= 0) {
        const next = body[at + marker.length];
        if (next === 0x0d || next === 0x3b) {  // CR or ';': the field's own header
            const start = body.indexOf('\r\n\r\n', at);
            if (start < 0) {
                return undefined;
            }
            const end = body.indexOf('\r\n', start + 4);
            return end < 0 ? undefined : body.slice(start + 4, end).toString();
        }
        at = body.indexOf(marker, at + marker.length);
    }
    return undefined;
}

function modelOf(r) {
    // [name] or [null, status, message, code] when the request cannot be routed.
    const type = (r.headersIn['Content-Type'] || '').toLowerCase();
    let body;
    try {
        body = type.startsWith('multipart/form-data') ? r.requestBuffer : r.requestText;
    } catch (e) {  // "request body is in a file": larger than what can be inspected
        return [null, 413, 'The request body is too large to be routed by its model field.',
                'request_too_large'];
    }
    if (!body || body.length === 0) {
        return [null, 400, 'You must provide a model parameter (the request has no body).',
                'missing_model'];
    }
    let name;
    if (type.startsWith('multipart/form-data')) {
        name = formField(body, 'model');
    } else {
        let doc;
        try {
            doc = JSON.parse(body);
        } catch (e) {
            return [null, 400, 'The request body is not valid JSON: ' + e.message,
                    'invalid_json'];
        }
        name = doc !== null && typeof doc === 'object' && !Array.isArray(doc)
            ? doc.model : undefined;
    }
    if (typeof name !== 'string' || name.length === 0) {
        return [null, 400, 'You must provide a model parameter.', 'missing_model'];
    }
    return [name];
}

function route(r) {
    const found = modelOf(r);
    const name = found[0];
    if (name === null) {
        fail(r, found[1], found[2], found[1] === 400 ? 'model' : null, found[3]);
        return;
    }
    let target = '';
    if (name.length <= MAX_NAME) {
        r.variables.ms_v1_model = name;
        target = r.variables.ms_v1_route;
    }
    if (!target) {  // checked first: a redirect to a missing location is a bare 500
        fail(r, 404, 'The model `' + name.slice(0, MAX_NAME) + '` does not exist.', 'model',
             'model_not_found');
        return;
    }
    r.internalRedirect(target);
}

export default {route};
