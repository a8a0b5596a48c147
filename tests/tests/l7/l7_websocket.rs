//! WebSocket through the L7 proxy with real framing: a tungstenite client talks to a tungstenite echo backend via
//! Padis (HTTP/1.1 Upgrade). Text, binary, a large fragmented message, ping/pong, a quiet period longer than the
//! header timeout, and the close handshake all cross the proxy intact.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use padis_tests::l7::{temp_dir, ws_echo_backend, Proxy};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_cross_the_proxy() {
    let dir = temp_dir();
    let backend = ws_echo_backend().await;
    // A short header timeout must not cut an upgraded connection that stays quiet longer than it.
    let config = format!(
        "[limits]\nheader_read_timeout = \"300ms\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"r\"\ngroup = \"g\"\n[[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"{backend}\"\n"
    );
    let p = Proxy::start(&config, dir.path()).await;
    let web = p.addr("web");
    let tcp = TcpStream::connect(web).await.expect("connect");
    let (mut ws, resp) =
        tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::client_async("ws://chat.test/socket", tcp))
            .await
            .expect("handshake in time")
            .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("sec-websocket-accept"), "{resp:?}");

    ws.send(Message::text("hello")).await.expect("send text");
    assert_eq!(recv(&mut ws).await, Message::text("echo: hello"));

    let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    ws.send(Message::binary(binary.clone())).await.expect("send binary");
    assert_eq!(recv(&mut ws).await, Message::binary(binary));

    // 300 KB: many TCP segments and reads on both sides of the proxy.
    let big: String = "0123456789abcdef".repeat(300 * 1024 / 16);
    ws.send(Message::text(big.clone())).await.expect("send big");
    assert_eq!(recv(&mut ws).await, Message::text(format!("echo: {big}")));

    // Quiet for longer than the header timeout, then a ping: the tunnel is still there.
    tokio::time::sleep(Duration::from_millis(600)).await;
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.expect("send ping");
    assert_eq!(recv(&mut ws).await, Message::Pong(b"are you there".to_vec().into()));

    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.expect("close");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None => return true,
                Some(Ok(_)) => continue,
                Some(Err(_)) => return false,
            }
        }
    })
    .await
    .expect("close handshake in time");
    assert!(end, "the close handshake did not complete cleanly");
    drop(ws);
    p.stop().await;
}

/// The next message (5 s at most).
async fn recv(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Message {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("reply in time") {
        Some(Ok(m)) => m,
        other => panic!("connection ended: {other:?}"),
    }
}
