"""SAML 2.0 single sign-on for Tether.

The ``saml`` resource kind holds an identity provider's metadata (its entity descriptor, or
where to fetch it) and which attribute values give which roles; ``tether login --auth=NAME``
sends the browser to the provider with an AuthnRequest (HTTP-Redirect binding) and reads the
response it posts back to the proxy. pysaml2 checks the signatures (the assertion's or the
whole response's, with the provider's certificate from its metadata), the audience, the
validity period and that the response answers this very request.
"""

import logging

# xmlschema, which pysaml2 imports when the auth service loads the connector, logs its schema
# loading at INFO: noise in the daemon's log (and on stderr before a start-up error)
logging.getLogger("xmlschema").setLevel(logging.WARNING)
