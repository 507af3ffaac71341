"""OpenID Connect single sign-on for Tether.

The ``oidc`` resource kind holds a provider's settings (``tetherctl create okta.yaml``);
``tether login --auth=okta`` logs in there with the authorization code flow and PKCE. The ID
token is verified with the provider's published keys (discovery, JWKS, refetched when the
provider rotates them): signature, issuer, audience, expiry and the login's nonce. Its claims
become the user's traits and, through ``claims_to_roles``, their roles.
"""
