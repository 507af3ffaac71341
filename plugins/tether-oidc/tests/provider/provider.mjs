// The OpenID provider the tether-oidc tests log in at: panva/oidc-provider (OpenID certified),
// on 127.0.0.1, with its development login and consent pages, which a test drives with an
// HTTP client as a user would with a browser. Usage: node provider.mjs SETTINGS.json
// SETTINGS: {"port", "clients": [{client_id, client_secret, redirect_uris, id_token_ttl?}],
//            "accounts": {"id": {claims...}}}
// Each start signs with a fresh key (a restart is a key rotation). Prints "listening" once up.
import fs from 'node:fs';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';

const settings = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };
const ttls = Object.fromEntries(settings.clients.map((c) => [c.client_id, c.id_token_ttl ?? 3600]));

const provider = new Provider(`http://127.0.0.1:${settings.port}`, {
  clients: settings.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: { keys: [jwk] },
  async findAccount(ctx, id) {
    const claims = settings.accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  claims: {
    openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'], env: ['env'],
    logins: ['logins'],
  },
  scopes: ['openid', 'email', 'groups', 'env', 'logins'],
  conformIdTokenClaims: false, // the scopes' claims go into the ID token, which Tether reads
  pkce: { required: () => true, methods: ["S256"] },
  ttl: { IdToken: (ctx, token, client) => ttls[client.clientId] ?? 3600 },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['tether-test-cookie-key'] },
});
provider.listen(settings.port, '127.0.0.1', () => console.log('listening'));
