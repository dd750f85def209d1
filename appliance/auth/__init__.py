"""Identity and access: who is calling (passwords, tokens, LDAP) and what they may do (policy)."""
