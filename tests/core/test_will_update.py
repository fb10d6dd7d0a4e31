"""WILLTOPICUPD / WILLMSGUPD while connected [§6.4], and will topics that must be refused."""

from __future__ import annotations

from gateway.bridge.base import Will
from gateway.core import OpenUpstreamSession, PublishUpstream, SendFrame
from gateway.core.settings import CoreSettings, Mode
from gateway.protocol.constants import QoS, ReturnCode
from gateway.protocol.messages import (
    Connack,
    Connect,
    Disconnect,
    WillMsg,
    WillMsgResp,
    WillMsgUpd,
    WillTopic,
    WillTopicReq,
    WillTopicResp,
    WillTopicUpd,
)
from tests.core.helpers import A1, A2, Driver


def test_willtopicupd_and_willmsgupd_are_accepted_and_used_when_lost() -> None:
    """Both updates are answered 'accepted' and the updated will is the one published."""
    d = Driver()
    d.rx(A1, Connect("n1", 10, True, True), 0.0)
    d.rx(A1, WillTopic("old/topic"), 0.0)
    d.rx(A1, WillMsg(b"old"), 0.0)
    assert d.rx(A1, WillTopicUpd("new/topic", QoS.AT_LEAST_ONCE, True), 1.0) == [
        SendFrame(A1, WillTopicResp(ReturnCode.ACCEPTED))
    ]
    assert d.rx(A1, WillMsgUpd(b"new"), 2.0) == [SendFrame(A1, WillMsgResp(ReturnCode.ACCEPTED))]
    assert d.run_until(16.9) == []
    assert d.run_until(17.0) == [(17.0, [PublishUpstream("n1", "new/topic", b"new", 1, True, 1)])]


def test_willtopicupd_keeps_the_message() -> None:
    """A new will topic alone keeps the stored message."""
    d = Driver()
    d.rx(A1, Connect("n1", 10, True, True), 0.0)
    d.rx(A1, WillTopic("old"), 0.0)
    d.rx(A1, WillMsg(b"msg"), 0.0)
    d.rx(A1, WillTopicUpd("new"), 1.0)
    assert d.run_until(20.0) == [(16.0, [PublishUpstream("n1", "new", b"msg", 0, False)])]


def test_willmsgupd_before_any_topic_then_topic() -> None:
    """WILLMSGUPD without a will topic waits for one; nothing is published without a topic."""
    d = Driver()
    d.connect(A1, "n1", duration=10)
    d.rx(A1, WillMsgUpd(b"m"), 1.0)
    d.rx(A1, WillTopicUpd("w"), 2.0)
    assert d.run_until(20.0) == [(17.0, [PublishUpstream("n1", "w", b"m", 0, False)])]
    d2 = Driver()
    d2.connect(A1, "n1", duration=10)
    d2.rx(A1, WillMsgUpd(b"m"), 1.0)
    assert d2.run_until(20.0) == []


def test_empty_willtopicupd_deletes_the_will() -> None:
    """An empty WILLTOPICUPD deletes topic and message; nothing is published when lost."""
    d = Driver()
    d.rx(A1, Connect("n1", 10, True, True), 0.0)
    d.rx(A1, WillTopic("w"), 0.0)
    d.rx(A1, WillMsg(b"m"), 0.0)
    assert d.rx(A1, WillTopicUpd(), 1.0) == [SendFrame(A1, WillTopicResp())]
    assert d.session("n1").will is None
    assert d.run_until(30.0) == []


def test_will_updates_from_unknown_address_get_disconnect() -> None:
    """Will updates need a connected session."""
    d = Driver()
    assert d.rx(A2, WillTopicUpd("w"), 0.0) == [SendFrame(A2, Disconnect())]
    assert d.rx(A2, WillMsgUpd(b"m"), 0.0) == [SendFrame(A2, Disconnect())]


def test_transparent_will_update_reopens_the_upstream_session() -> None:
    """Transparent mode: the broker connection is reopened with the new will [§5.5]."""
    d = Driver(CoreSettings(mode=Mode.TRANSPARENT))
    d.rx(A1, Connect("n1", 10, False, True), 0.0)
    d.core.on_upstream_session("n1", True, 0, 0.0)
    out = d.rx(A1, WillTopicUpd("w", QoS.AT_LEAST_ONCE), 1.0)
    assert out == [
        OpenUpstreamSession("n1", False, Will("w", b"", 1, False), 10),
        SendFrame(A1, WillTopicResp()),
    ]
    out = d.rx(A1, WillMsgUpd(b"bye"), 2.0)
    assert out == [
        OpenUpstreamSession("n1", False, Will("w", b"bye", 1, False), 10),
        SendFrame(A1, WillMsgResp()),
    ]


def test_wildcard_will_topic_is_refused_at_connect() -> None:
    """A will topic with a wildcard can never be published: CONNACK not supported."""
    d = Driver()
    assert d.rx(A1, Connect("n1", 10, True, True), 0.0) == [SendFrame(A1, WillTopicReq())]
    out = d.rx(A1, WillTopic("a/#"), 0.0)
    assert out == [SendFrame(A1, Connack(ReturnCode.REJECTED_NOT_SUPPORTED))]
    assert "n1" not in d.core.sessions
    assert d.run_until(100.0) == []


def test_wildcard_willtopicupd_is_refused() -> None:
    """WILLTOPICUPD with a wildcard -> WILLTOPICRESP not supported; the old will stays."""
    d = Driver()
    d.rx(A1, Connect("n1", 10, True, True), 0.0)
    d.rx(A1, WillTopic("w"), 0.0)
    d.rx(A1, WillMsg(b"m"), 0.0)
    out = d.rx(A1, WillTopicUpd("a/+"), 1.0)
    assert out == [SendFrame(A1, WillTopicResp(ReturnCode.REJECTED_NOT_SUPPORTED))]
    assert d.run_until(20.0) == [(16.0, [PublishUpstream("n1", "w", b"m", 0, False)])]
