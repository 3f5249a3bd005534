"""TenantQuotas on its own: in-flight and stored bytes both count, a replaced chunk is credited,
a refused put counts nothing, and usage() reports stored bytes only."""

import pytest

from kvstore.errors import QuotaExceeded
from kvstore.tiers.quota import TenantQuotas


def test_in_flight_and_stored_bytes_both_count_against_the_quota():
    q = TenantQuotas({"a": 100})
    q.reserve("a", 60)
    with pytest.raises(QuotaExceeded, match=r"quota 100 bytes, used 0 bytes \(\+60 being put\)"):
        q.reserve("a", 41)
    q.release("a", 60)
    q.charge("a", 60)  # the put committed: stored now, no longer in flight
    q.reserve("a", 40)  # 60 + 40 = 100: exactly at the quota is allowed
    with pytest.raises(QuotaExceeded):
        q.reserve("a", 1)
    assert q.usage() == {"a": 60}


def test_replacing_own_chunk_is_credited_and_refusals_count_nothing():
    q = TenantQuotas({"a": 100})
    q.charge("a", 90)
    with pytest.raises(QuotaExceeded):
        q.reserve("a", 50)
    q.reserve("a", 50, credit=90)  # replaces its own 90-byte chunk: 90 - 90 + 50 <= 100
    q.release("a", 50)
    q.reserve("a", 10)  # the refused 50 left nothing behind: 90 + 10 = 100
    assert q.usage() == {"a": 90}


def test_tenants_without_a_quota_are_only_counted():
    q = TenantQuotas({"a": 10})
    q.reserve("b", 10**12)
    q.charge("b", 5)
    q.charge("a", 3)
    q.charge("a", -3)  # removed again: left out of usage
    assert q.usage() == {"b": 5}
