// JWT fixtures made with node `jose` (SignJWT), for tests/interop/40-jwt.sh.
// usage: node mint.mjs DIR   (keys as mint.py documents; writes DIR/tokens/jose-*.jwt)
// Run from a directory whose node_modules holds jose.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SignJWT, importPKCS8 } from 'jose';

const dir = process.argv[2];
const pem = (stem) => readFileSync(join(dir, `${stem}.pem`), 'utf8');
const secret = readFileSync(join(dir, 'hs.key')).subarray(0, -1); // drop the trailing newline

async function token(sub, alg, key, kid, extra = {}) {
  const jwt = new SignJWT({
    email: `${sub}@example.test`,
    groups: ['staff', `${sub}-team`],
    ...extra,
  })
    .setProtectedHeader(kid ? { alg, kid, typ: 'JWT' } : { alg, typ: 'JWT' })
    .setIssuer('https://idp.test')
    .setAudience('sallyport-api')
    .setSubject(sub)
    .setJti(randomBytes(9).toString('base64url'))
    .setIssuedAt()
    .setExpirationTime('10m');
  return jwt.sign(key);
}

const out = {
  'jose-rs256': await token('oscar', 'RS256', await importPKCS8(pem('rsa-1'), 'RS256'), 'rsa-1'),
  'jose-es256': await token('peggy', 'ES256', await importPKCS8(pem('ec-1'), 'ES256'), 'ec-1'),
  'jose-eddsa': await token('trent', 'EdDSA', await importPKCS8(pem('ed-1'), 'EdDSA'), 'ed-1'),
  'jose-hs256': await token('victor', 'HS256', new Uint8Array(secret), undefined),
  'jose-pem-rs256': await token('uuid-9', 'RS256', await importPKCS8(pem('rsa-1'), 'RS256'),
    undefined, { preferred_username: 'walter', realm_access: { roles: ['ops'] } }),
};
for (const [name, tok] of Object.entries(out)) {
  writeFileSync(join(dir, 'tokens', `${name}.jwt`), tok);
}
