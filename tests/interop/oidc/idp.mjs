// The OpenID Provider for tests/interop/60-oidc.sh: node `oidc-provider` over HTTPS on
// 127.0.0.1, issuer https://localhost:PORT, its built-in development interactions (a login
// form where any login and password work, then a consent page) and RP-initiated logout.
//
// usage: node idp.mjs   with the environment
//   IDP_PORT           port to listen on (127.0.0.1)
//   IDP_CERT, IDP_KEY  PEM files for the HTTPS listener (a leaf for localhost)
//   IDP_SECRET_FILE    the client secret of client "sallyport" (trailing newline trimmed)
//   IDP_RP_BASES       comma-separated sallyport base URLs (https://localhost:PORT); each
//                      gets BASE/.sallyport/callback as redirect URI and BASE/ and BASE/bye
//                      as post-logout redirect URIs
//                      (ISSUER/interop/callback is registered for both as well: the
//                      driver's own flows land there, a page this server answers itself)
//   IDP_AT_TTL         access token lifetime in seconds (default 2, so refresh is exercised)
//
// Prints "ready ISSUER" once listening, then one line per event the test counts:
//   event grant.success GRANT_TYPE
//   event grant.error GRANT_TYPE ERROR
//   event end_session.success
//   event server_error MESSAGE
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const env = (name, fallback) => {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) throw new Error(`${name} is not set`);
    return fallback;
  }
  return v;
};

const port = Number(env('IDP_PORT'));
const issuer = `https://localhost:${port}`;
const secret = readFileSync(env('IDP_SECRET_FILE'), 'utf8').replace(/\r?\n$/, '');
const bases = env('IDP_RP_BASES').split(',').map((b) => b.trim().replace(/\/$/, '')).filter(Boolean);
const accessTokenTtl = Number(env('IDP_AT_TTL', '2'));
const captureUri = `${issuer}/interop/callback`;

// A fresh RSA signing key per run (RS256 is the ID token default).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'interop-rs256', alg: 'RS256', use: 'sig' };

const configuration = {
  clients: [{
    client_id: 'sallyport',
    client_secret: secret,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [...bases.map((b) => `${b}/.sallyport/callback`), captureUri],
    post_logout_redirect_uris: [...bases.flatMap((b) => [`${b}/`, `${b}/bye`]), captureUri],
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // Standard scopes plus a non-standard `groups` claim under `profile`, so the proxy's
  // groups mapping sees something.
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name', 'groups'],
    sid: null,
    auth_time: null,
    acr: null,
    iss: null,
  },
  // Put the scope's claims into the ID token as well, not only behind the userinfo
  // endpoint, so a relying party that reads only the ID token gets email and friends.
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.com`,
          email_verified: true,
          preferred_username: id,
          name: `User ${id}`,
          groups: ['staff', `${id}-team`],
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  // oidc-provider drops offline_access unless the request says prompt=consent; the proxy
  // asks for a refresh token by scope only, so issue one to this client regardless, and
  // rotate it on every use (a second use of a rotated token revokes the grant, so a proxy
  // that refreshes twice in parallel gets caught).
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
    RefreshToken: 3600,
  },
};

const provider = new Provider(issuer, configuration);

const say = (line) => process.stdout.write(`${line}\n`);
provider.on('grant.success', (ctx) => say(`event grant.success ${ctx.oidc.params?.grant_type}`));
provider.on('grant.error', (ctx, err) => say(`event grant.error ${ctx.oidc?.params?.grant_type} ${err.error || err.message}`));
provider.on('end_session.success', () => say('event end_session.success'));
provider.on('server_error', (_ctx, err) => say(`event server_error ${err.message}`));

const app = provider.callback();
const server = createServer({
  cert: readFileSync(env('IDP_CERT')),
  key: readFileSync(env('IDP_KEY')),
}, (req, res) => {
  if (req.url.startsWith('/interop/callback')) {
    res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
    res.end('captured\n');
    return;
  }
  app(req, res);
});
server.listen(port, '127.0.0.1', () => say(`ready ${issuer}`));

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
