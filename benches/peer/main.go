// Command peer is the benchmarks' stand-in for kubernetes-sigs/aws-encryption-provider,
// whose module the Go module proxy here refuses to serve (403 for every version).
//
// It is built the way that plugin, and every other existing plugin, works: KMS v1beta1
// and v2 on one UNIX socket (the upstream k8s.io/kms API types), one AWS KMS call per
// Encrypt and per Decrypt (no cache, no local key hierarchy), aws-encryption-provider's
// ciphertext format (byte '1' + the raw CiphertextBlob), and a v2 Status that runs a
// real Encrypt+Decrypt at most every 30 s. kmsplug's AWS provider reads its ciphertexts.
// --health-port serves /healthz and a Prometheus counter of its KMS calls at /metrics.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsv1 "k8s.io/kms/apis/v1beta1"
	kmsv2 "k8s.io/kms/apis/v2"
)

// storageVersion prefixes every ciphertext, as aws-encryption-provider does.
var storageVersion = []byte("1")

const healthPeriod = 30 * time.Second

// calls counts KMS calls by operation and outcome, for /metrics.
type calls struct{ encryptOK, encryptErr, decryptOK, decryptErr atomic.Int64 }

func (c *calls) note(ok, bad *atomic.Int64, err error) {
	if err != nil {
		bad.Add(1)
	} else {
		ok.Add(1)
	}
}

func (c *calls) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintln(w, "# HELP peer_kms_operations_total Calls to AWS KMS by operation and status.")
	fmt.Fprintln(w, "# TYPE peer_kms_operations_total counter")
	for _, row := range []struct {
		op, status string
		n          *atomic.Int64
	}{
		{"encrypt", "ok", &c.encryptOK}, {"encrypt", "error", &c.encryptErr},
		{"decrypt", "ok", &c.decryptOK}, {"decrypt", "error", &c.decryptErr},
	} {
		fmt.Fprintf(w, "peer_kms_operations_total{operation=%q,status=%q} %d\n", row.op, row.status, row.n.Load())
	}
}

type plugin struct {
	client *kms.Client
	key    string
	calls  calls

	mu          sync.Mutex
	lastHealthy time.Time
}

func (p *plugin) encrypt(ctx context.Context, plain []byte) ([]byte, error) {
	out, err := p.client.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(p.key), Plaintext: plain})
	p.calls.note(&p.calls.encryptOK, &p.calls.encryptErr, err)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "kms encrypt: %v", err)
	}
	return append(append([]byte{}, storageVersion...), out.CiphertextBlob...), nil
}

func (p *plugin) decrypt(ctx context.Context, cipher []byte, requirePrefix bool) ([]byte, error) {
	if bytes.HasPrefix(cipher, storageVersion) {
		cipher = cipher[len(storageVersion):]
	} else if requirePrefix {
		return nil, status.Error(codes.InvalidArgument, "ciphertext has no storage version")
	}
	out, err := p.client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: cipher})
	p.calls.note(&p.calls.decryptOK, &p.calls.decryptErr, err)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "kms decrypt: %v", err)
	}
	return out.Plaintext, nil
}

// healthy runs Encrypt+Decrypt unless one succeeded within healthPeriod.
func (p *plugin) healthy(ctx context.Context) error {
	p.mu.Lock()
	recent := time.Since(p.lastHealthy) < healthPeriod
	p.mu.Unlock()
	if recent {
		return nil
	}
	probe := []byte("health")
	sealed, err := p.encrypt(ctx, probe)
	if err != nil {
		return err
	}
	opened, err := p.decrypt(ctx, sealed, true)
	if err != nil {
		return err
	}
	if !bytes.Equal(opened, probe) {
		return errors.New("health probe did not round-trip")
	}
	p.mu.Lock()
	p.lastHealthy = time.Now()
	p.mu.Unlock()
	return nil
}

type v1Server struct {
	kmsv1.UnimplementedKeyManagementServiceServer
	*plugin
}

func (s v1Server) Version(context.Context, *kmsv1.VersionRequest) (*kmsv1.VersionResponse, error) {
	return &kmsv1.VersionResponse{Version: "v1beta1", RuntimeName: "peer", RuntimeVersion: "0.1.0"}, nil
}

func (s v1Server) Encrypt(ctx context.Context, r *kmsv1.EncryptRequest) (*kmsv1.EncryptResponse, error) {
	cipher, err := s.encrypt(ctx, r.Plain)
	if err != nil {
		return nil, err
	}
	return &kmsv1.EncryptResponse{Cipher: cipher}, nil
}

func (s v1Server) Decrypt(ctx context.Context, r *kmsv1.DecryptRequest) (*kmsv1.DecryptResponse, error) {
	plain, err := s.decrypt(ctx, r.Cipher, false)
	if err != nil {
		return nil, err
	}
	return &kmsv1.DecryptResponse{Plain: plain}, nil
}

type v2Server struct {
	kmsv2.UnimplementedKeyManagementServiceServer
	*plugin
}

func (s v2Server) Status(ctx context.Context, _ *kmsv2.StatusRequest) (*kmsv2.StatusResponse, error) {
	healthz := "ok"
	if err := s.healthy(ctx); err != nil {
		healthz = "err"
	}
	return &kmsv2.StatusResponse{Version: "v2", Healthz: healthz, KeyId: s.key}, nil
}

func (s v2Server) Encrypt(ctx context.Context, r *kmsv2.EncryptRequest) (*kmsv2.EncryptResponse, error) {
	cipher, err := s.encrypt(ctx, r.Plaintext)
	if err != nil {
		return nil, err
	}
	return &kmsv2.EncryptResponse{Ciphertext: cipher, KeyId: s.key}, nil
}

func (s v2Server) Decrypt(ctx context.Context, r *kmsv2.DecryptRequest) (*kmsv2.DecryptResponse, error) {
	if r.KeyId != s.key {
		return nil, status.Errorf(codes.InvalidArgument, "unknown key_id %q", r.KeyId)
	}
	plain, err := s.decrypt(ctx, r.Ciphertext, true)
	if err != nil {
		return nil, err
	}
	return &kmsv2.DecryptResponse{Plaintext: plain}, nil
}

func main() {
	listen := flag.String("listen", "/var/run/kmsplugin/socket.sock", "UNIX socket to serve on")
	key := flag.String("key", "", "AWS KMS key id or ARN")
	region := flag.String("region", "", "AWS region")
	endpoint := flag.String("kms-endpoint", "", "AWS KMS endpoint URL")
	healthPort := flag.String("health-port", "", "host:port for /healthz and /metrics (none if empty)")
	flag.Parse()
	if *key == "" {
		log.Fatal("--key is required")
	}

	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(*region))
	if err != nil {
		log.Fatalf("aws config: %v", err)
	}
	client := kms.NewFromConfig(cfg, func(o *kms.Options) {
		if *endpoint != "" {
			o.BaseEndpoint = aws.String(*endpoint)
		}
	})
	p := &plugin{client: client, key: *key}
	if *healthPort != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", &p.calls)
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			if err := p.healthy(r.Context()); err != nil {
				http.Error(w, "kms unhealthy", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		health := &http.Server{Addr: *healthPort, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { log.Print(health.ListenAndServe()) }()
	}

	if err := os.Remove(*listen); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("remove stale socket: %v", err)
	}
	listener, err := net.Listen("unix", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	server := grpc.NewServer()
	kmsv1.RegisterKeyManagementServiceServer(server, v1Server{plugin: p})
	kmsv2.RegisterKeyManagementServiceServer(server, v2Server{plugin: p})

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.GracefulStop()
	}()
	log.Printf("serving KMS v1beta1 and v2 on %s", *listen)
	if err := server.Serve(listener); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
